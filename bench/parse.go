package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrToolOutput is wrapped by every error about output of an external tool
// that cannot be understood.
var ErrToolOutput = errors.New("bench: unexpected tool output")

// FioResult is what one fio job measured: operations and bytes per second
// and the mean and 99th percentile of the total (submission to completion)
// latency per direction.
type FioResult struct {
	ReadIOPS, WriteIOPS       float64
	ReadBW, WriteBW           float64       // bytes per second
	ReadLatency, WriteLatency time.Duration // mean total latency (lat_ns)
	ReadP99, WriteP99         time.Duration // 99th percentile of lat_ns (0 without --lat_percentiles)
	ReadIOs, WriteIOs         int64
}

type fioDir struct {
	IOPS     float64 `json:"iops"`
	BW       float64 `json:"bw_bytes"`
	TotalIOs int64   `json:"total_ios"`
	Lat      struct {
		Mean       float64            `json:"mean"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"lat_ns"`
}

// p99 is the "99.000000" percentile fio reports, or 0.
func (d fioDir) p99() time.Duration {
	return time.Duration(d.Lat.Percentile["99.000000"])
}

type fioJobReport struct {
	Name  string `json:"jobname"`
	Error int    `json:"error"`
	Read  fioDir `json:"read"`
	Write fioDir `json:"write"`
}

// ParseFio decodes fio's --output-format=json report of a single job (or of
// jobs with group reporting, of which the first is taken). Text that fio's
// engines print before the JSON object ("fio: connected to NBD server") is
// skipped.
func ParseFio(b []byte) (FioResult, error) {
	i := bytes.IndexByte(b, '{')
	if i < 0 {
		return FioResult{}, fmt.Errorf("%w: fio printed no JSON object", ErrToolOutput)
	}
	var doc struct {
		Jobs []fioJobReport `json:"jobs"`
	}
	if err := json.Unmarshal(b[i:], &doc); err != nil {
		return FioResult{}, fmt.Errorf("%w: fio JSON: %v", ErrToolOutput, err)
	}
	if len(doc.Jobs) == 0 {
		return FioResult{}, fmt.Errorf("%w: fio JSON has no jobs", ErrToolOutput)
	}
	j := doc.Jobs[0]
	if j.Error != 0 {
		return FioResult{}, fmt.Errorf("%w: fio job %q ended with error %d", ErrToolOutput, j.Name, j.Error)
	}
	for _, v := range []float64{j.Read.IOPS, j.Write.IOPS, j.Read.BW, j.Write.BW, j.Read.Lat.Mean, j.Write.Lat.Mean,
		float64(j.Read.p99()), float64(j.Write.p99())} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return FioResult{}, fmt.Errorf("%w: fio reported %v", ErrToolOutput, v)
		}
	}
	if j.Read.TotalIOs == 0 && j.Write.TotalIOs == 0 {
		return FioResult{}, fmt.Errorf("%w: fio job %q completed no I/O", ErrToolOutput, j.Name)
	}
	return FioResult{
		ReadIOPS: j.Read.IOPS, WriteIOPS: j.Write.IOPS,
		ReadBW: j.Read.BW, WriteBW: j.Write.BW,
		ReadP99: j.Read.p99(), WriteP99: j.Write.p99(),
		ReadLatency:  time.Duration(j.Read.Lat.Mean),
		WriteLatency: time.Duration(j.Write.Lat.Mean),
		ReadIOs:      j.Read.TotalIOs, WriteIOs: j.Write.TotalIOs,
	}, nil
}

// QemuBench is one run of `qemu-img bench`.
type QemuBench struct {
	Requests int           // requests sent (-c)
	Write    bool          // write requests (-w)
	Size     int           // bytes per request (-s)
	Depth    int           // requests in parallel (-d)
	Elapsed  time.Duration // "Run completed in" — the I/O loop alone
}

var (
	qemuSending = regexp.MustCompile(`Sending (\d+) (read|write) requests, (\d+) bytes each, (\d+) in parallel`)
	qemuDone    = regexp.MustCompile(`Run completed in (\d+(?:\.\d+)?) seconds`)
)

// ParseQemuBench decodes the two lines `qemu-img bench` prints:
//
//	Sending 20000 write requests, 4096 bytes each, 32 in parallel (starting at offset 0, step size 4096)
//	Run completed in 1.457 seconds.
func ParseQemuBench(out string) (QemuBench, error) {
	m := qemuSending.FindStringSubmatch(out)
	if m == nil {
		return QemuBench{}, fmt.Errorf("%w: qemu-img bench: no \"Sending N requests\" line in %q", ErrToolOutput, clip(out))
	}
	d := qemuDone.FindStringSubmatch(out)
	if d == nil {
		return QemuBench{}, fmt.Errorf("%w: qemu-img bench: no \"Run completed\" line in %q", ErrToolOutput, clip(out))
	}
	var q QemuBench
	var err error
	if q.Requests, err = strconv.Atoi(m[1]); err != nil {
		return QemuBench{}, fmt.Errorf("%w: qemu-img bench count: %v", ErrToolOutput, err)
	}
	q.Write = m[2] == "write"
	if q.Size, err = strconv.Atoi(m[3]); err != nil {
		return QemuBench{}, fmt.Errorf("%w: qemu-img bench size: %v", ErrToolOutput, err)
	}
	if q.Depth, err = strconv.Atoi(m[4]); err != nil {
		return QemuBench{}, fmt.Errorf("%w: qemu-img bench depth: %v", ErrToolOutput, err)
	}
	secs, err := strconv.ParseFloat(d[1], 64)
	if err != nil || secs > 1e6 {
		return QemuBench{}, fmt.Errorf("%w: qemu-img bench time %q", ErrToolOutput, d[1])
	}
	q.Elapsed = time.Duration(secs * float64(time.Second))
	if q.Requests <= 0 || q.Elapsed <= 0 {
		return QemuBench{}, fmt.Errorf("%w: qemu-img bench: %d requests in %v", ErrToolOutput, q.Requests, q.Elapsed)
	}
	return q, nil
}

// IOPS is requests per second.
func (q QemuBench) IOPS() float64 { return float64(q.Requests) / q.Elapsed.Seconds() }

// MeanLatency is the elapsed time per request times the depth: at depth 1
// it is the mean latency of a request; at depth d, by Little's law, the
// mean time a request spent in flight.
func (q QemuBench) MeanLatency() time.Duration {
	return time.Duration(float64(q.Elapsed) * float64(max(q.Depth, 1)) / float64(q.Requests))
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

var qemuIOOps = regexp.MustCompile(`(?m)^\S+ \S+, 1 ops; \S+ sec \([^)]* and (\d+(?:\.\d+)?) ops/sec\)$`)

// ParseQemuIOLatencies decodes the report qemu-io prints after each
// single-request command, one per command:
//
//	wrote 4096/4096 bytes at offset 0
//	4 KiB, 1 ops; 00.00 sec (1.925 MiB/sec and 492.7577 ops/sec)
//
// The seconds are printed to 10 ms only, but the rate is computed from the
// exact elapsed time and printed to four decimals, so the latency of each
// request is 1 / rate. want is the number of commands sent; fewer reports
// is an error.
func ParseQemuIOLatencies(out string, want int) ([]time.Duration, error) {
	ms := qemuIOOps.FindAllStringSubmatch(out, -1)
	if len(ms) != want {
		return nil, fmt.Errorf("%w: qemu-io: %d timing lines for %d commands in %q", ErrToolOutput, len(ms), want, clip(out))
	}
	lat := make([]time.Duration, len(ms))
	for i, m := range ms {
		rate, err := strconv.ParseFloat(m[1], 64)
		if err != nil || rate <= 0 || math.IsInf(rate, 0) {
			return nil, fmt.Errorf("%w: qemu-io rate %q", ErrToolOutput, m[1])
		}
		lat[i] = time.Duration(float64(time.Second) / rate)
	}
	return lat, nil
}

// Percentile returns the p-th percentile (0 < p <= 100) of ds by the
// nearest-rank method, or 0 for no samples.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// MeanDuration is the arithmetic mean of ds, or 0 for no samples.
func MeanDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

var resyncDoneLine = regexp.MustCompile(`msg="resync done".*copied_bytes=(\d+) took=(\S+)`)

// Resync is what one hostd log says about the resyncs of a volume.
type Resync struct {
	Count  int           // "resync done" lines
	Copied int64         // bytes copied, summed over them
	Took   time.Duration // the longest took=
}

// ParseResyncs reads the "resync done" lines hostd logged for volume (in
// slog's text format, with volume=NAME on each line).
func ParseResyncs(log, volume string) (Resync, error) {
	var r Resync
	tag := "volume=" + volume + " "
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, tag) {
			continue
		}
		m := resyncDoneLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return Resync{}, fmt.Errorf("%w: copied_bytes %q", ErrToolOutput, m[1])
		}
		d, err := time.ParseDuration(m[2])
		if err != nil {
			return Resync{}, fmt.Errorf("%w: took %q", ErrToolOutput, m[2])
		}
		r.Count++
		r.Copied += n
		r.Took = max(r.Took, d)
	}
	return r, nil
}
