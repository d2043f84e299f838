package store

import (
	"errors"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	h := Header{ID: "0f8c2c52-8d0b-4a39-9a55-3f3c0a8a9d11", Size: 64 << 20, Epoch: 7, Created: 1234567890}
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Header
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got != h {
		t.Fatalf("round trip: got %+v, want %+v", got, h)
	}
}

func TestHeaderRejects(t *testing.T) {
	good, err := Header{ID: "c1", Size: 4096}.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { b := append([]byte(nil), good...); b[i] ^= 0xff; return b }
	tests := []struct {
		name string
		b    []byte
	}{
		{"short", good[:100]},
		{"magic", flip(0)},
		{"version", flip(8)},
		{"size bit", flip(20)},
		{"id byte", flip(48)},
		{"checksum", flip(125)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Header
			if err := h.UnmarshalBinary(tt.b); !errors.Is(err, ErrCorruptHeader) {
				t.Fatalf("got %v, want ErrCorruptHeader", err)
			}
		})
	}
	if _, err := (Header{ID: "", Size: 1}).MarshalBinary(); err == nil {
		t.Fatal("empty id accepted")
	}
}

func FuzzHeader(f *testing.F) {
	good, _ := Header{ID: "seed", Size: 1 << 20, Epoch: 1}.MarshalBinary()
	f.Add(good)
	f.Add(make([]byte, headerLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Header
		if err := h.UnmarshalBinary(b); err != nil {
			return
		}
		out, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded header does not encode: %v", err)
		}
		var h2 Header
		if err := h2.UnmarshalBinary(out); err != nil || h2 != h {
			t.Fatalf("re-decode: %+v %v, want %+v", h2, err, h)
		}
	})
}
