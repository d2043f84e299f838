package hostd

import (
	"errors"
	"testing"
	"time"
)

// TestVolumeStatsWindow: a window's rates, mean latency and 99th
// percentile (to the bucket) come from the operations observed in it only.
func TestVolumeStatsWindow(t *testing.T) {
	s := newVolumeStats()
	start := s.last.at
	for i := range 100 {
		took := 100 * time.Microsecond // bucket of 100 µs
		if i == 99 {
			took = 3 * time.Millisecond // bucket of 3.2 ms
		}
		s.observe("write", 4096, nil, took)
	}
	for range 50 {
		s.observe("read", 8192, nil, 40*time.Microsecond)
	}
	s.observe("read", 8192, errors.New("eio"), time.Millisecond)
	s.observe("flush", 0, nil, time.Millisecond)
	w := s.window(start.Add(2 * time.Second))
	if w.WindowSeconds != 2 || w.WriteIOPS != 50 || w.ReadIOPS != 25 || w.WriteBytesPerSec != 50*4096 || w.ReadBytesPerSec != 25*8192 || w.Errors != 1 {
		t.Fatalf("first window: %+v", w)
	}
	if w.WriteLatencyMeanUs < 128 || w.WriteLatencyMeanUs > 130 || w.WriteLatencyP99Us != 100 || w.ReadLatencyP99Us != 50 {
		t.Fatalf("latencies: %+v", w)
	}
	s.observe("write", 4096, nil, 3*time.Millisecond)
	w = s.window(start.Add(3 * time.Second))
	if w.WindowSeconds != 1 || w.WriteIOPS != 1 || w.ReadIOPS != 0 || w.Errors != 0 || w.WriteLatencyP99Us != 3200 {
		t.Fatalf("second window: %+v", w)
	}
	if s.window(start.Add(3*time.Second)) != nil {
		t.Fatal("an empty window")
	}
}
