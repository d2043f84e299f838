package bitmap

import "testing"

func TestHeaderErrorMessage(t *testing.T) {
	e := &HeaderError{Path: "/dev/shm/x.wib", Field: "epoch", Got: "3", Want: "4", Err: ErrMismatch}
	if got, want := e.Error(), "bitmap: identity or geometry mismatch: /dev/shm/x.wib: epoch is 3, want 4"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	e = &HeaderError{Field: "crc", Got: "computed 1, stored 2", Err: ErrCorrupt}
	if got, want := e.Error(), "bitmap: corrupt: crc: computed 1, stored 2"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
}
