package store

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

func TestIntentBitmap(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.Create("c1", 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	if r, bits, err := s.ReadIntent(c); err != nil || r != 0 || bits != nil {
		t.Fatalf("fresh chunk intent: %d %v %v", r, bits, err)
	}
	want := []byte{0x81, 0, 0x10}
	if err := s.WriteIntent(c, 1<<20, want); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteIntent(c, 1<<20, []byte{0x01, 0x02, 0x03}); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteIntent(c, 1<<20, want); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err = s.Get("c1")
	if err != nil {
		t.Fatal(err)
	}
	r, bits, err := s.ReadIntent(c)
	if err != nil || r != 1<<20 || !bytes.Equal(bits, want) {
		t.Fatalf("intent after reopen: %d %x %v", r, bits, err)
	}
	// Damage: refused, never misread.
	b, _ := os.ReadFile(s.intentPath("c1"))
	b[intentHdr] ^= 0xff
	os.WriteFile(s.intentPath("c1"), b, 0o644)
	if _, _, err := s.ReadIntent(c); !errors.Is(err, ErrCorruptHeader) {
		t.Fatalf("damaged intent bitmap: %v, want ErrCorruptHeader", err)
	}
	if err := s.Delete("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.intentPath("c1")); !os.IsNotExist(err) {
		t.Fatalf("intent file survives delete: %v", err)
	}
}

func FuzzIntent(f *testing.F) {
	good, _ := EncodeIntent(1<<20, []byte{1, 2, 3})
	f.Add(good)
	f.Add([]byte("CRINTNT\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, bits, err := DecodeIntent(b)
		if err != nil {
			return
		}
		out, err := EncodeIntent(r, bits)
		if err != nil {
			t.Fatalf("decoded intent does not encode: %v", err)
		}
		r2, bits2, err := DecodeIntent(out)
		if err != nil || r2 != r || !bytes.Equal(bits, bits2) {
			t.Fatal("re-decode differs")
		}
	})
}
