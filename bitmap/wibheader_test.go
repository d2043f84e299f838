package bitmap

import (
	"bytes"
	"errors"
	"testing"
)

func TestWIBHeaderRoundTrip(t *testing.T) {
	tests := []wibHeader{
		{size: 10 << 30, regionSize: 1 << 20, regions: 10240, epoch: 1, set: 0, volume: "vol"},
		{size: 1, regionSize: 512, regions: 1, epoch: 1<<64 - 1, set: 1 << 40, volume: ""},
		{size: 1<<63 - 1, regionSize: 1 << 62, regions: 2, volume: string(bytes.Repeat([]byte{'x'}, 255))},
	}
	for _, h := range tests {
		b := make([]byte, wibHeaderLen)
		h.encode(b)
		got, err := decodeWIBHeader(b)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", h, err)
		}
		if got != h {
			t.Fatalf("decode(encode(%+v)) = %+v", h, got)
		}
	}
	if _, err := decodeWIBHeader(make([]byte, 10)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short header: %v", err)
	}
}

func FuzzWIBHeader(f *testing.F) {
	b := make([]byte, wibHeaderLen)
	wibHeader{size: 10 << 30, regionSize: 1 << 20, regions: 10240, epoch: 3, set: 2, volume: "vol"}.encode(b)
	f.Add(b)
	f.Add(make([]byte, wibHeaderLen))
	f.Add([]byte("CRWIB\x00\x00\x00"))
	short := bytes.Clone(b)
	short[56] = 255
	f.Add(short)
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(data []byte) {
			h, err := decodeWIBHeader(data)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
					t.Fatalf("decode error %v is neither ErrCorrupt nor ErrVersion", err)
				}
				return
			}
			out := make([]byte, wibHeaderLen)
			h.encode(out)
			if !bytes.Equal(out, data[:wibHeaderLen]) {
				t.Fatalf("accepted header does not re-encode to itself:\n% x\n% x", data[:wibHeaderLen], out)
			}
			if wibFileLen(h.regions) < wibHeaderPage {
				t.Fatalf("accepted header with %d regions gives a file shorter than the header page", h.regions)
			}
		}
		check(data)
		if len(data) >= wibHeaderLen { // and past the CRC, to reach the field checks
			sealed := bytes.Clone(data)
			reseal(sealed)
			check(sealed)
		}
	})
}
