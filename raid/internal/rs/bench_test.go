package rs

import "testing"

func shardsFor(b *testing.B, c *Code, unit int) [][]byte {
	sh := make([][]byte, c.K()+c.M())
	for i := range sh {
		sh[i] = make([]byte, unit)
		for j := range sh[i] {
			sh[i][j] = byte(i*7 + j)
		}
	}
	return sh
}

// BenchmarkEncode measures parity encoding of one 4+2 stripe of 64 KiB
// units; bytes are the data bytes encoded.
func BenchmarkEncode(b *testing.B) {
	for _, l := range []struct{ k, m int }{{2, 1}, {4, 2}, {8, 3}} {
		b.Run(itoa(l.k)+"+"+itoa(l.m), func(b *testing.B) {
			c, err := New(l.k, l.m)
			if err != nil {
				b.Fatal(err)
			}
			sh := shardsFor(b, c, 64<<10)
			b.SetBytes(int64(l.k) * 64 << 10)
			for b.Loop() {
				if err := c.Encode(sh); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReconstruct rebuilds M lost data units of a stripe of 64 KiB
// units; bytes are the data bytes of the stripe.
func BenchmarkReconstruct(b *testing.B) {
	for _, l := range []struct{ k, m int }{{2, 1}, {4, 2}, {8, 3}} {
		b.Run(itoa(l.k)+"+"+itoa(l.m), func(b *testing.B) {
			c, err := New(l.k, l.m)
			if err != nil {
				b.Fatal(err)
			}
			sh := shardsFor(b, c, 64<<10)
			if err := c.Encode(sh); err != nil {
				b.Fatal(err)
			}
			want := make([]bool, l.k+l.m)
			for i := 0; i < l.m; i++ {
				want[i] = true
			}
			b.SetBytes(int64(l.k) * 64 << 10)
			for b.Loop() {
				for i := 0; i < l.m; i++ {
					sh[i] = sh[i][:0]
				}
				if err := c.Reconstruct(sh, want); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func itoa(n int) string { return string(rune('0' + n)) }
