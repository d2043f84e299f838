package raid_test

import (
	"testing"

	"github.com/chunkraid/chunkraid/raid"
	"github.com/chunkraid/chunkraid/raid/raidtest"
)

// BenchmarkMirrorWrite4K measures a mirror's fan-out (WIB, region locks,
// parallel member writes) over in-memory members.
func BenchmarkMirrorWrite4K(b *testing.B) {
	for _, n := range []int{2, 3} {
		b.Run(string(rune('0'+n))+"-way", func(b *testing.B) {
			members := make([]raid.Device, n)
			for i := range members {
				members[i] = raidtest.NewMemDevice(64 << 20)
			}
			m, err := raid.NewMirror(raid.MirrorConfig{SetConfig: raid.SetConfig{Members: members}})
			if err != nil {
				b.Fatal(err)
			}
			p := make([]byte, 4096)
			b.SetBytes(4096)
			b.ReportAllocs()
			off := int64(0)
			for b.Loop() {
				if err := m.WriteAt(b.Context(), p, off, false); err != nil {
					b.Fatal(err)
				}
				off = (off + 4096) % (64 << 20)
			}
		})
	}
}
