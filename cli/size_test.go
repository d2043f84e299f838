package cli

import "testing"

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true},
		{"64MiB", 64 << 20, true},
		{"20G", 20 << 30, true},
		{"10GiB", 10 << 30, true},
		{"1 TiB", 1 << 40, true},
		{"", 0, false},
		{"GiB", 0, false},
		{"-1", 0, false},
		{"1.5G", 0, false},
		{"9999999999T", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
	if s := formatSize(20 << 30); s != "20 GiB" {
		t.Errorf("formatSize(20GiB) = %q", s)
	}
	if s := formatSize(1536); s != "1.5 KiB" {
		t.Errorf("formatSize(1536) = %q", s)
	}
}
