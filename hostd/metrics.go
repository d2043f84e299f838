package hostd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/chunkraid/chunkraid/internal/pki"
	"github.com/chunkraid/chunkraid/internal/scrape"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// metrics are hostd's Prometheus series, registered on Config.Metrics and
// served on --metrics-listen. Labels are bounded by the cluster's shape:
// volume names, set and member indexes, operations and states; never an
// offset.
type metrics struct {
	ops      *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	// SCSI commands of the target, by the command table's names
	scsi         *prometheus.CounterVec
	scsiDuration *prometheus.HistogramVec
	// the same per member of a set, as the set asked of it
	memberOps      *prometheus.CounterVec
	memberBytes    *prometheus.CounterVec
	memberDuration *prometheus.HistogramVec
}

func newMetrics(s *Server, reg *prometheus.Registry) *metrics {
	m := &metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkraid_hostd_volume_ops_total",
			Help: "Operations the iSCSI target asked of a volume, by kind (read, write, flush, trim) and result (ok, error).",
		}, []string{"volume", "op", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkraid_hostd_volume_bytes_total",
			Help: "Bytes read from and written to a volume successfully.",
		}, []string{"volume", "op"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chunkraid_hostd_volume_op_duration_seconds",
			Help:    "Time a volume took to complete an operation, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10),
		}, []string{"volume", "op"}),
	}
	m.memberOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chunkraid_hostd_member_ops_total",
		Help: "Requests a set sent to a member chunk (over NBD), by kind and result (ok, error).",
	}, []string{"volume", "set", "member", "op", "result"})
	m.memberBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chunkraid_hostd_member_bytes_total",
		Help: "Bytes read from and written to a member chunk successfully (resync copies included).",
	}, []string{"volume", "set", "member", "op"})
	m.memberDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "chunkraid_hostd_member_op_duration_seconds",
		Help:    "Time a member chunk took to answer a request, by kind.",
		Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10),
	}, []string{"volume", "set", "member", "op"})
	m.scsi = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chunkraid_hostd_iscsi_commands_total",
		Help: "SCSI commands the iSCSI target ran, by command and status (GOOD, CHECK_CONDITION, ...).",
	}, []string{"command", "status"})
	m.scsiDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "chunkraid_hostd_iscsi_command_duration_seconds",
		Help:    "Time the target took to run a SCSI command once its data was in, by command.",
		Buckets: prometheus.ExponentialBuckets(0.00002, 4, 11),
	}, []string{"command"})
	reg.MustRegister(m.ops, m.bytes, m.duration, m.memberOps, m.memberBytes, m.memberDuration, m.scsi, m.scsiDuration,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "chunkraid_hostd_iscsi_sessions",
			Help:        "iSCSI sessions logged in to this host's targets.",
			ConstLabels: prometheus.Labels{"kind": "normal"},
		}, func() float64 { n, _ := s.target.Sessions(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "chunkraid_hostd_iscsi_sessions",
			Help:        "iSCSI sessions logged in to this host's targets.",
			ConstLabels: prometheus.Labels{"kind": "discovery"},
		}, func() float64 { _, n := s.target.Sessions(); return float64(n) }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&setCollector{s: s},
	)
	return m
}

// scsiStatus names the SCSI status codes (SAM-5) for the status label.
var scsiStatus = map[uint8]string{0x00: "GOOD", 0x02: "CHECK_CONDITION", 0x08: "BUSY", 0x18: "RESERVATION_CONFLICT",
	0x28: "TASK_SET_FULL", 0x40: "TASK_ABORTED"}

// observeSCSI counts one SCSI command (iscsi.Config.Observe).
func (m *metrics) observeSCSI(command string, status uint8, took time.Duration) {
	st, ok := scsiStatus[status]
	if !ok {
		st = fmt.Sprintf("0x%02x", status)
	}
	m.scsi.WithLabelValues(command, st).Inc()
	m.scsiDuration.WithLabelValues(command).Observe(took.Seconds())
}

// volumeOps counts the operations of one volume (lun).
type volumeOps struct {
	m     *metrics
	name  string
	stats *volumeStats
}

func (v volumeOps) observe(op string, n int, err error, start time.Time) {
	v.stats.observe(op, n, err, time.Since(start))
	if v.m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	} else if n > 0 {
		v.m.bytes.WithLabelValues(v.name, op).Add(float64(n))
	}
	v.m.ops.WithLabelValues(v.name, op, result).Inc()
	v.m.duration.WithLabelValues(v.name, op).Observe(time.Since(start).Seconds())
}

// forget drops a volume's series when the host stops serving it.
func (m *metrics) forget(volume string) {
	if m == nil {
		return
	}
	for _, v := range []interface {
		DeletePartialMatch(prometheus.Labels) int
	}{m.ops, m.bytes, m.duration, m.memberOps, m.memberBytes, m.memberDuration} {
		v.DeletePartialMatch(prometheus.Labels{"volume": volume})
	}
}

// meter counts the requests of member i of set of volume on c.
func (m *metrics) meter(c memberConn, volume string, set, i int) memberConn {
	if m == nil {
		return c
	}
	return &meteredMember{memberConn: c, m: m, labels: [3]string{volume, strconv.Itoa(set), strconv.Itoa(i)}}
}

// meteredMember is a member connection whose requests are counted.
type meteredMember struct {
	memberConn
	m      *metrics
	labels [3]string // volume, set, member
}

func (d *meteredMember) observe(op string, n int, err error, start time.Time) {
	v, s, i := d.labels[0], d.labels[1], d.labels[2]
	result := "ok"
	if err != nil {
		result = "error"
	} else if n > 0 {
		d.m.memberBytes.WithLabelValues(v, s, i, op).Add(float64(n))
	}
	d.m.memberOps.WithLabelValues(v, s, i, op, result).Inc()
	d.m.memberDuration.WithLabelValues(v, s, i, op).Observe(time.Since(start).Seconds())
}

func (d *meteredMember) ReadAt(ctx context.Context, p []byte, off int64) error {
	start := time.Now()
	err := d.memberConn.ReadAt(ctx, p, off)
	d.observe("read", len(p), err, start)
	return err
}

func (d *meteredMember) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	start := time.Now()
	err := d.memberConn.WriteAt(ctx, p, off, fua)
	d.observe("write", len(p), err, start)
	return err
}

func (d *meteredMember) Flush(ctx context.Context) error {
	start := time.Now()
	err := d.memberConn.Flush(ctx)
	d.observe("flush", 0, err, start)
	return err
}

func (d *meteredMember) Trim(ctx context.Context, off, length int64) error {
	start := time.Now()
	err := d.memberConn.Trim(ctx, off, length)
	d.observe("trim", 0, err, start)
	return err
}

// setCollector reads the attached volumes at each scrape, as the reports to
// the metaserver do: member states, dirty bytes, resync and rebuild
// progress.
type setCollector struct{ s *Server }

var (
	descMember = prometheus.NewDesc("chunkraid_hostd_member_state",
		"1 for a member's state as this host sees it (in_sync, degraded, resyncing, rebuilding), by volume, set and member.",
		[]string{"volume", "set", "member", "state"}, nil)
	descDirty = prometheus.NewDesc("chunkraid_hostd_set_dirty_bytes",
		"Bytes of a set's write-intent bitmap that are dirty: what a crash of this host would have to resync.", []string{"volume", "set"}, nil)
	descResyncDone = prometheus.NewDesc("chunkraid_hostd_resync_done_bytes",
		"Bytes the set's running (or last) resync or rebuild has copied.", []string{"volume", "set"}, nil)
	descResyncTotal = prometheus.NewDesc("chunkraid_hostd_resync_total_bytes",
		"Bytes the set's running (or last) resync or rebuild has to copy.", []string{"volume", "set"}, nil)
	descVolumes = prometheus.NewDesc("chunkraid_hostd_volumes", "Volumes this host serves.", nil, nil)

	descQoSLimit = prometheus.NewDesc("chunkraid_hostd_volume_qos_limit",
		"A volume's I/O limit in force, by limit (iops, read_iops, write_iops in commands a second; bps, read_bps, write_bps in bytes a second).",
		[]string{"volume", "limit"}, nil)
	descQoSThrottled = prometheus.NewDesc("chunkraid_hostd_volume_qos_throttled_total",
		"Commands that waited for a volume's I/O limits.", []string{"volume"}, nil)
	descQoSThrottledSeconds = prometheus.NewDesc("chunkraid_hostd_volume_qos_throttled_seconds_total",
		"Time commands waited for a volume's I/O limits.", []string{"volume"}, nil)
	descQoSBusy = prometheus.NewDesc("chunkraid_hostd_volume_qos_busy_total",
		"Commands answered TASK SET FULL because they would have waited longer than the cap for a volume's I/O limits.", []string{"volume"}, nil)
)

func (c *setCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMember, descDirty, descResyncDone, descResyncTotal, descVolumes,
		descQoSLimit, descQoSThrottled, descQoSThrottledSeconds, descQoSBusy} {
		ch <- d
	}
}

func (c *setCollector) Collect(ch chan<- prometheus.Metric) {
	c.s.mu.Lock()
	attached := make([]*attachment, 0, len(c.s.mu.attached))
	for _, a := range c.s.mu.attached {
		attached = append(attached, a)
	}
	c.s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(len(attached)))
	for _, a := range attached {
		if a.lu != nil {
			q, name := a.lu.qos, a.lu.ops.name
			lim := q.limits()
			for _, l := range lim.Limits() {
				if l.Limit.Rate != 0 {
					ch <- prometheus.MustNewConstMetric(descQoSLimit, prometheus.GaugeValue, float64(l.Limit.Rate), name, strings.ReplaceAll(l.Flag, "-", "_"))
				}
			}
			ch <- prometheus.MustNewConstMetric(descQoSThrottled, prometheus.CounterValue, float64(q.throttled.Load()), name)
			ch <- prometheus.MustNewConstMetric(descQoSThrottledSeconds, prometheus.CounterValue, time.Duration(q.throttledNs.Load()).Seconds(), name)
			ch <- prometheus.MustNewConstMetric(descQoSBusy, prometheus.CounterValue, float64(q.busy.Load()), name)
		}
		r := a.snapshot(false)
		for _, sr := range r.Sets {
			set := strconv.Itoa(sr.Index)
			ch <- prometheus.MustNewConstMetric(descDirty, prometheus.GaugeValue, float64(sr.DirtyBytes), r.Name, set)
			var done, total int64
			for i, mr := range sr.Members {
				ch <- prometheus.MustNewConstMetric(descMember, prometheus.GaugeValue, 1, r.Name, set, strconv.Itoa(i), mr.State)
				done, total = max(done, mr.ResyncDoneBytes), max(total, mr.ResyncTotalBytes)
			}
			ch <- prometheus.MustNewConstMetric(descResyncDone, prometheus.GaugeValue, float64(done), r.Name, set)
			ch <- prometheus.MustNewConstMetric(descResyncTotal, prometheus.GaugeValue, float64(total), r.Name, set)
		}
	}
}

// metricsListener opens Config.MetricsListen and makes the certificate
// request of its TLS key; nil without one.
func (s *Server) metricsListener() (net.Listener, error) {
	ln := s.cfg.MetricsListener
	if ln == nil && s.cfg.MetricsListen == "" {
		return nil, nil
	}
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.MetricsListen); err != nil {
			return nil, fmt.Errorf("hostd: metrics listen: %w", err)
		}
	}
	csr, key, err := pki.NewRequest("hostd " + s.cfg.Name + " metrics")
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("hostd: metrics key: %w", err)
	}
	s.metricsCSR, s.metricsKey = csr, key
	return ln, nil
}

// serveMetrics serves /metrics over TLS on ln with the certificate the
// registration brought, to any operator token of the cluster, until ctx
// ends.
func (s *Server) serveMetrics(ctx context.Context, ln net.Listener, certPEM string) error {
	mc, ok := s.meta.(*api.Client)
	if !ok {
		return errors.New("hostd: metrics need the metaserver's HTTP client to check tokens")
	}
	tc, err := pki.ServerConfig([]byte(certPEM), s.metricsKey)
	if err != nil {
		return fmt.Errorf("hostd: the metrics certificate the metaserver signed: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", scrape.Handler(s.registry, scrape.WithMetaserver(mc), s.log))
	srv := &http.Server{Handler: mux, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err = srv.Serve(tls.NewListener(ln, tc))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("hostd: metrics: %w", err)
}

// volumeStats are the figures of one volume for people (chunkraid volume
// stats): counters since the attach, from which the reporter makes rates
// and latencies over the time between two of its reports.
type volumeStats struct {
	ops, bytes, latSum [2]atomic.Int64 // read, write; latSum in ns
	lat                [2][statBuckets]atomic.Int64
	errs               atomic.Int64
	qos                *volumeQoS // its throttling counts; set at attach

	// what the previous window ended with; the reporter's alone
	last struct {
		at                           time.Time
		ops, bytes, latSum           [2]int64
		lat                          [2][statBuckets]int64
		errs                         int64
		throttled, throttledNs, busy int64
	}
}

// statBuckets are latency buckets: bucket i holds latencies up to
// statBase·2^i, the last one everything longer.
const (
	statBuckets = 16
	statBase    = 50 * time.Microsecond
)

func newVolumeStats() *volumeStats {
	s := &volumeStats{}
	s.last.at = time.Now()
	return s
}

func (s *volumeStats) observe(op string, n int, err error, took time.Duration) {
	if s == nil {
		return
	}
	if err != nil {
		s.errs.Add(1)
		return
	}
	var i int
	switch op {
	case "read":
		i = 0
	case "write":
		i = 1
	default:
		return
	}
	s.ops[i].Add(1)
	s.bytes[i].Add(int64(n))
	s.latSum[i].Add(int64(took))
	b := 0
	for b < statBuckets-1 && took > statBase<<b {
		b++
	}
	s.lat[i][b].Add(1)
}

// window returns the figures since the previous window and starts the
// next one; nil if no time passed. Only the reporter calls it.
func (s *volumeStats) window(now time.Time) *api.VolumeStats {
	secs := now.Sub(s.last.at).Seconds()
	if secs <= 0 {
		return nil
	}
	out := &api.VolumeStats{WindowSeconds: secs}
	rate := func(cur int64, last *int64) float64 {
		d := cur - *last
		*last = cur
		return float64(d) / secs
	}
	var meanUs, p99Us [2]float64
	for i := range 2 {
		ops := s.ops[i].Load()
		n := ops - s.last.ops[i]
		sum := s.latSum[i].Load()
		if n > 0 {
			meanUs[i] = float64(sum-s.last.latSum[i]) / float64(n) / 1e3
		}
		s.last.latSum[i] = sum
		var counts [statBuckets]int64
		var total int64
		for b := range statBuckets {
			c := s.lat[i][b].Load()
			counts[b] = c - s.last.lat[i][b]
			s.last.lat[i][b] = c
			total += counts[b]
		}
		if total > 0 {
			want, seen := (total*99+99)/100, int64(0)
			for b := range statBuckets {
				if seen += counts[b]; seen >= want {
					p99Us[i] = float64((statBase << b).Microseconds())
					break
				}
			}
		}
	}
	out.ReadIOPS = rate(s.ops[0].Load(), &s.last.ops[0])
	out.WriteIOPS = rate(s.ops[1].Load(), &s.last.ops[1])
	out.ReadBytesPerSec = rate(s.bytes[0].Load(), &s.last.bytes[0])
	out.WriteBytesPerSec = rate(s.bytes[1].Load(), &s.last.bytes[1])
	out.ReadLatencyMeanUs, out.WriteLatencyMeanUs = meanUs[0], meanUs[1]
	out.ReadLatencyP99Us, out.WriteLatencyP99Us = p99Us[0], p99Us[1]
	errs := s.errs.Load()
	out.Errors = errs - s.last.errs
	s.last.errs = errs
	if q := s.qos; q != nil {
		n, ns, busy := q.throttled.Load(), q.throttledNs.Load(), q.busy.Load()
		out.Throttled, out.ThrottledSeconds, out.Busy = n-s.last.throttled, time.Duration(ns-s.last.throttledNs).Seconds(), busy-s.last.busy
		s.last.throttled, s.last.throttledNs, s.last.busy = n, ns, busy
	}
	s.last.at = now
	return out
}
