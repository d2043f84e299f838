package bench

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseFio(t *testing.T) {
	// Recorded from fio 3.33 against nbdkit, including the line the nbd
	// engine prints before the JSON.
	b, err := os.ReadFile("testdata/fio-nbd-randrw.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseFio(b)
	if err != nil {
		t.Fatal(err)
	}
	if int(got.ReadIOPS) != 25077 || int(got.WriteIOPS) != 25064 {
		t.Errorf("IOPS read %v write %v, want 25077.9 and 25064.9", got.ReadIOPS, got.WriteIOPS)
	}
	if got.ReadIOs != 25103 || got.WriteIOs != 25090 {
		t.Errorf("total ios read %d write %d, want 25103 and 25090", got.ReadIOs, got.WriteIOs)
	}
	if got.ReadLatency != 79270*time.Nanosecond {
		t.Errorf("read latency %v, want 79.27µs", got.ReadLatency)
	}
}

func TestParseFioErrors(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"no JSON", "fio: engine nbd not loadable\n", "no JSON object"},
		{"broken JSON", `{"jobs": [`, "fio JSON"},
		{"no jobs", `{"jobs": []}`, "no jobs"},
		{"job error", `{"jobs": [{"jobname": "x", "error": 5, "write": {"iops": 1, "total_ios": 1}}]}`, "error 5"},
		{"no I/O", `{"jobs": [{"jobname": "x", "read": {"iops": 0}, "write": {"iops": 0}}]}`, "no I/O"},
		{"negative", `{"jobs": [{"jobname": "x", "write": {"iops": -3, "total_ios": 9}}]}`, "reported -3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFio([]byte(tt.in))
			if !errors.Is(err, ErrToolOutput) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseFio(%q) = %v, want ErrToolOutput mentioning %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestParseQemuBench(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     QemuBench
		iops     float64
		latency  time.Duration
		wantFail bool
	}{
		{
			name: "write QD32",
			in: "Sending 20000 write requests, 4096 bytes each, 32 in parallel (starting at offset 0, step size 4096)\n" +
				"Run completed in 1.457 seconds.\n",
			want: QemuBench{Requests: 20000, Write: true, Size: 4096, Depth: 32, Elapsed: 1457 * time.Millisecond},
			iops: 20000 / 1.457, latency: time.Duration(1.457 * 32 / 20000 * float64(time.Second)),
		},
		{
			name: "read QD1",
			in: "Sending 4000 read requests, 4096 bytes each, 1 in parallel (starting at offset 0, step size 4096)\n" +
				"Run completed in 2.000 seconds.\n",
			want: QemuBench{Requests: 4000, Size: 4096, Depth: 1, Elapsed: 2 * time.Second},
			iops: 2000, latency: 500 * time.Microsecond,
		},
		{name: "no completion line", in: "Sending 1 write requests, 4096 bytes each, 1 in parallel\n", wantFail: true},
		{name: "no sending line", in: "Run completed in 1.0 seconds.\n", wantFail: true},
		{name: "zero time", in: "Sending 5 read requests, 512 bytes each, 1 in parallel\nRun completed in 0.000 seconds.", wantFail: true},
		{name: "error text", in: "qemu-img: Could not open 'iscsi://x': Failed to connect\n", wantFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseQemuBench(tt.in)
			if tt.wantFail {
				if !errors.Is(err, ErrToolOutput) {
					t.Fatalf("ParseQemuBench = %+v, %v; want ErrToolOutput", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
			if d := got.IOPS() - tt.iops; d > 0.01 || d < -0.01 {
				t.Errorf("IOPS = %v, want %v", got.IOPS(), tt.iops)
			}
			if d := got.MeanLatency() - tt.latency; d > time.Microsecond || d < -time.Microsecond {
				t.Errorf("MeanLatency = %v, want %v", got.MeanLatency(), tt.latency)
			}
		})
	}
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		user, sys  time.Duration
		wantFailed bool
	}{
		{
			name: "plain",
			in:   "1234 (tgtd) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 37 0 0 20 0 17 0 100 0 0",
			user: 2500 * time.Millisecond, sys: 370 * time.Millisecond,
		},
		{
			name: "command with spaces and parentheses",
			in:   "77 (a (b) c) R 1 77 77 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 5 0 0",
			user: 30 * time.Millisecond, sys: 40 * time.Millisecond,
		},
		{name: "truncated", in: "1 (x) S 1 2 3", wantFailed: true},
		{name: "no name", in: "1 x S 1 2 3 4 5 6 7 8 9 10 11 12 13", wantFailed: true},
		{name: "not a number", in: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 a 4 0", wantFailed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, s, err := parseProcStat(tt.in)
			if tt.wantFailed {
				if !errors.Is(err, ErrToolOutput) {
					t.Fatalf("parseProcStat = %v, %v, %v; want ErrToolOutput", u, s, err)
				}
				return
			}
			if err != nil || u != tt.user || s != tt.sys {
				t.Errorf("parseProcStat = %v, %v, %v; want %v, %v", u, s, err, tt.user, tt.sys)
			}
		})
	}
}

func TestProcCPUSelf(t *testing.T) {
	// Burn some CPU, then this process's own counters must show it.
	x := 0
	for i := range 50_000_000 {
		x += i % 7
	}
	u, s, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u+s <= 0 || x == 0 {
		t.Errorf("own CPU time %v + %v after a busy loop", u, s)
	}
}

func FuzzParseFio(f *testing.F) {
	if b, err := os.ReadFile("testdata/fio-nbd-randrw.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"jobs":[{"jobname":"a","write":{"iops":1e308,"total_ios":1,"lat_ns":{"mean":1e300}}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseFio(b)
		if err == nil && (r.ReadIOPS < 0 || r.WriteIOPS < 0 || (r.ReadIOs == 0 && r.WriteIOs == 0)) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzParseQemuBench(f *testing.F) {
	f.Add("Sending 20000 write requests, 4096 bytes each, 32 in parallel (starting at offset 0, step size 4096)\nRun completed in 1.457 seconds.\n")
	f.Add("Sending 99999999999999999999 read requests, 1 bytes each, 1 in parallel\nRun completed in 1e9 seconds.")
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseQemuBench(s)
		if err == nil && (q.Requests <= 0 || q.Elapsed <= 0 || q.IOPS() <= 0) {
			t.Fatalf("accepted %+v", q)
		}
	})
}

func FuzzParseProcStat(f *testing.F) {
	f.Add("1234 (tgtd) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 37 0 0 20 0 17 0 100 0 0")
	f.Fuzz(func(t *testing.T, s string) {
		u, st, err := parseProcStat(s)
		if err == nil && (u < 0 || st < 0) {
			t.Fatalf("accepted negative times %v %v", u, st)
		}
	})
}

func TestPerfBody(t *testing.T) {
	in := "# To display the perf.data header info, please use --header/--header-only options.\n#\n" +
		"# Overhead  Shared Object      Symbol                          IPC   [IPC Coverage]\n" +
		"# ........  .................  ..............................  ....................................\n" +
		"#\n" +
		"    28.86%  [kernel.kallsyms]  [k] finish_task_switch.isra.0     -      -            \n" +
		"     2.02%  chunkraid          [.] runtime.pcvalue              -      -            \n\n"
	want := "# Overhead  Shared Object      Symbol\n" +
		"    28.86%  [kernel.kallsyms]  [k] finish_task_switch.isra.0\n" +
		"     2.02%  chunkraid          [.] runtime.pcvalue"
	if got := perfBody(in); got != want {
		t.Errorf("perfBody =\n%q\nwant\n%q", got, want)
	}
}

func TestParsePerfStat(t *testing.T) {
	got, err := parsePerfStat("145,,raw_syscalls:sys_enter,1307874,100.00,,\n1,,context-switches,1307874,100.00,,\n")
	if err != nil {
		t.Fatal(err)
	}
	if got["raw_syscalls:sys_enter"] != 145 || got["context-switches"] != 1 || len(got) != 2 {
		t.Errorf("parsePerfStat = %v", got)
	}
	for _, bad := range []string{
		"<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n",
		"Error: no such process\n",
		"",
	} {
		if _, err := parsePerfStat(bad); !errors.Is(err, ErrToolOutput) {
			t.Errorf("parsePerfStat(%q) = %v, want ErrToolOutput", bad, err)
		}
	}
}

func TestParseQemuIOLatencies(t *testing.T) {
	out := "qemu-io> wrote 4096/4096 bytes at offset 0\n4 KiB, 1 ops; 00.00 sec (1.925 MiB/sec and 5000.0000 ops/sec)\n" +
		"qemu-io> read 4096/4096 bytes at offset 8192\n4 KiB, 1 ops; 00.00 sec (99.461 MiB/sec and 2000.0000 ops/sec)\nqemu-io> "
	lat, err := ParseQemuIOLatencies(out, 2)
	if err != nil {
		t.Fatal(err)
	}
	if lat[0] != 200*time.Microsecond || lat[1] != 500*time.Microsecond {
		t.Errorf("latencies %v, want [200µs 500µs]", lat)
	}
	if _, err := ParseQemuIOLatencies(out, 3); !errors.Is(err, ErrToolOutput) {
		t.Errorf("3 commands, 2 reports: err %v, want ErrToolOutput", err)
	}
	if _, err := ParseQemuIOLatencies("4 KiB, 1 ops; 00.00 sec (1 MiB/sec and 0.0000 ops/sec)\n", 1); !errors.Is(err, ErrToolOutput) {
		t.Errorf("zero rate: err %v, want ErrToolOutput", err)
	}
}

func TestPercentileAndMean(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(101-i)*time.Microsecond)
	}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{99, 99 * time.Microsecond}, {50, 50 * time.Microsecond}, {100, 100 * time.Microsecond}, {0.1, time.Microsecond}} {
		if got := Percentile(ds, tt.p); got != tt.want {
			t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if ds[0] != 100*time.Microsecond {
		t.Error("Percentile sorted its input")
	}
	if got := MeanDuration(ds); got != 50500*time.Nanosecond {
		t.Errorf("MeanDuration = %v, want 50.5µs", got)
	}
	if Percentile(nil, 99) != 0 || MeanDuration(nil) != 0 {
		t.Error("empty input: want 0")
	}
}

func TestParseResyncs(t *testing.T) {
	log := `time=1 level=INFO msg="resync started" volume=rs-cs epoch=1 set=0 dirty_regions=4
time=2 level=INFO msg="resync done" volume=rs-cs epoch=1 set=0 copied_bytes=4194304 took=251ms
time=3 level=INFO msg="resync done" volume=rs-cs2 epoch=1 set=0 copied_bytes=999 took=9s
time=4 level=INFO msg="resync done" volume=rs-cs epoch=2 set=1 copied_bytes=1048576 took=1.2s
`
	rs, err := ParseResyncs(log, "rs-cs")
	if err != nil {
		t.Fatal(err)
	}
	if rs.Count != 2 || rs.Copied != 5<<20 || rs.Took != 1200*time.Millisecond {
		t.Errorf("got %+v, want 2 resyncs, 5 MiB, 1.2s", rs)
	}
	if _, err := ParseResyncs(`msg="resync done" volume=v copied_bytes=1 took=soon`, "v"); !errors.Is(err, ErrToolOutput) {
		t.Errorf("bad took: err %v, want ErrToolOutput", err)
	}
}
