package store

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

func TestCreateReadWriteReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Create("c1", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{0x5a}, 8192)
	if err := c.WriteAt(p, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("c1", 4<<20); err != nil {
		t.Fatalf("re-create with same size: %v", err)
	}
	if _, err := s.Create("c1", 8<<20); !errors.Is(err, ErrExists) {
		t.Fatalf("re-create with other size: %v, want ErrExists", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err = s.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(p))
	if err := c.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, p) {
		t.Fatal("data lost across reopen")
	}
	if err := c.ReadAt(got[:4096], 4<<20-4096); err != nil {
		t.Fatalf("read of the last block: %v", err)
	}
	if err := c.ReadAt(got[:4096], 4<<20-4096+1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read past end: %v, want ErrOutOfRange", err)
	}
	st, err := os.Stat(s.dataPath("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 4<<20 {
		t.Fatalf("data file size %d", st.Size())
	}
}

func TestTrimAndExtents(t *testing.T) {
	s, err := Open(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := s.Create("c2", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	ext, err := c.Extents(0, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || !ext[0].Hole {
		t.Fatalf("new chunk extents %+v, want one hole", ext)
	}
	if err := c.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 1<<20); err != nil {
		t.Fatal(err)
	}
	ext, err = c.Extents(0, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range ext {
		if !e.Hole {
			data += e.Length
		}
	}
	if data < 1<<20 || data > 2<<20 {
		t.Fatalf("allocated %d bytes after a 1 MiB write: %+v", data, ext)
	}
	if err := c.Trim(1<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	if err := c.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, 1<<20)) {
		t.Fatal("trimmed range is not zero")
	}
	if err := c.WriteAt([]byte{9}, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(0, 4096, true); err != nil {
		t.Fatal(err)
	}
	if err := c.ReadAt(got[:4096], 0); err != nil || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatalf("write zeroes: %v", err)
	}
}

func TestDeleteAndDamagedSidecar(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("a", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("b", 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted chunk still served: %v", err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	s.Close()
	// Damage b's sidecar: it must not be served, and its data must stay.
	if err := os.WriteFile(s.metaPath("b"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get("b"); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("chunk with damaged sidecar: %v, want ErrQuarantined", err)
	}
	if _, err := os.Stat(s.dataPath("b")); err != nil {
		t.Fatalf("data of damaged chunk removed: %v", err)
	}
	if _, err := s.Create("../x", 4096); err == nil {
		t.Fatal("path-like id accepted")
	}
}
