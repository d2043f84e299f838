package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"time"
)

// ErrToolOutput is wrapped by every error about output of an external tool
// that cannot be understood.
var ErrToolOutput = errors.New("bench: unexpected tool output")

// FioResult is what one fio job measured: operations per second and mean
// completion-to-submission latency per direction.
type FioResult struct {
	ReadIOPS, WriteIOPS       float64
	ReadLatency, WriteLatency time.Duration // mean total latency (lat_ns)
	ReadIOs, WriteIOs         int64
}

type fioDir struct {
	IOPS     float64 `json:"iops"`
	TotalIOs int64   `json:"total_ios"`
	Lat      struct {
		Mean float64 `json:"mean"`
	} `json:"lat_ns"`
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
	for _, v := range []float64{j.Read.IOPS, j.Write.IOPS, j.Read.Lat.Mean, j.Write.Lat.Mean} {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return FioResult{}, fmt.Errorf("%w: fio reported %v", ErrToolOutput, v)
		}
	}
	if j.Read.TotalIOs == 0 && j.Write.TotalIOs == 0 {
		return FioResult{}, fmt.Errorf("%w: fio job %q completed no I/O", ErrToolOutput, j.Name)
	}
	return FioResult{
		ReadIOPS: j.Read.IOPS, WriteIOPS: j.Write.IOPS,
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
