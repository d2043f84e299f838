package nbd

import "testing"

// BenchmarkRequestCodec encodes and decodes a 4 KiB WRITE request header.
func BenchmarkRequestCodec(b *testing.B) {
	r := Request{Type: CmdWrite, Cookie: 42, Offset: 1 << 20, Length: 4096}
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendRequest(buf[:0], r)
		got, err := DecodeRequest(buf)
		if err != nil || got.Cookie != 42 {
			b.Fatal(err)
		}
	}
}
