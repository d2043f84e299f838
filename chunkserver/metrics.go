package chunkserver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
)

// metrics are the chunkserver's Prometheus series, registered on
// Config.Metrics and served at /metrics on the control port. Labels are
// bounded: NBD command names and error names, never offsets or chunks.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	syncs    *prometheus.HistogramVec
}

func newMetrics(s *Server, reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkraid_chunkserver_nbd_requests_total",
			Help: "NBD requests answered, by command and result (ok, or the NBD error sent).",
		}, []string{"cmd", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chunkraid_chunkserver_nbd_request_duration_seconds",
			Help:    "Time from reading an NBD request to queueing its reply, by command.",
			Buckets: prometheus.ExponentialBuckets(0.00002, 4, 10),
		}, []string{"cmd"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkraid_chunkserver_nbd_bytes_total",
			Help: "Bytes of the NBD reads and writes answered successfully, by command.",
		}, []string{"cmd"}),
		syncs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chunkraid_chunkserver_fdatasync_duration_seconds",
			Help:    "fdatasync of chunk data files, by result (ok or failed: a failed one fails its chunk).",
			Buckets: prometheus.ExponentialBuckets(0.00005, 4, 10),
		}, []string{"result"}),
	}
	reg.MustRegister(m.requests, m.duration, m.bytes, m.syncs,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&storeCollector{s: s},
	)
	return m
}

// observeNBD counts one NBD request answered (nbd.ServerConfig.Observe).
func (m *metrics) observeNBD(cmd uint16, length, errno uint32, took time.Duration) {
	name := nbd.CmdName(cmd)
	result := "ok"
	if errno != 0 {
		result = nbd.ErrnoName(errno)
	} else if cmd == nbd.CmdRead || cmd == nbd.CmdWrite {
		m.bytes.WithLabelValues(name).Add(float64(length))
	}
	m.requests.WithLabelValues(name, result).Inc()
	m.duration.WithLabelValues(name).Observe(took.Seconds())
}

// observeSync times one fdatasync (store.Config.ObserveSync).
func (m *metrics) observeSync(took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	m.syncs.WithLabelValues(result).Observe(took.Seconds())
}

// storeCollector reads the store at each scrape: its chunks by state and
// its disk's capacity, free and allocated bytes.
type storeCollector struct{ s *Server }

var (
	descChunks = prometheus.NewDesc("chunkraid_chunkserver_chunks",
		"Chunks held, by state: served, or failed (a durability error or a damaged sidecar: kept on disk, not served).", []string{"state"}, nil)
	descDisk = prometheus.NewDesc("chunkraid_chunkserver_disk_bytes",
		"The data directory's filesystem: capacity, free, and allocated (what the chunk files take).", []string{"kind"}, nil)
	descSnapshots = prometheus.NewDesc("chunkraid_chunkserver_snapshot_layers",
		"Snapshot layers of the chunks held: one per chunk per snapshot.", nil, nil)
	descSnapshotBytes = prometheus.NewDesc("chunkraid_chunkserver_snapshot_bytes",
		"Bytes the chunks' snapshot layers hold: the blocks changed since a snapshot, kept for it.", nil, nil)
	descOutOfSpace = prometheus.NewDesc("chunkraid_chunkserver_out_of_space",
		"1 while the chunkserver has refused a request for lack of space since its free space last measured above the nearly-full mark.", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descChunks
	ch <- descDisk
	ch <- descOutOfSpace
	ch <- descSnapshots
	ch <- descSnapshotBytes
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.store // set before the control port serves
	if st == nil {
		return
	}
	failed := st.Failed()
	inList := 0 // List has the failed chunks that are not quarantined
	for _, f := range failed {
		if !f.Quarantined {
			inList++
		}
	}
	ch <- prometheus.MustNewConstMetric(descChunks, prometheus.GaugeValue, float64(len(st.List())-inList), "served")
	ch <- prometheus.MustNewConstMetric(descChunks, prometheus.GaugeValue, float64(len(failed)), "failed")
	if capacity, free, err := st.Usage(); err == nil {
		ch <- prometheus.MustNewConstMetric(descDisk, prometheus.GaugeValue, float64(capacity), "capacity")
		ch <- prometheus.MustNewConstMetric(descDisk, prometheus.GaugeValue, float64(free), "free")
	}
	if alloc, err := st.Allocated(); err == nil {
		ch <- prometheus.MustNewConstMetric(descDisk, prometheus.GaugeValue, float64(alloc), "allocated")
	}
	out := 0.0
	if st.OutOfSpace() {
		out = 1
	}
	ch <- prometheus.MustNewConstMetric(descOutOfSpace, prometheus.GaugeValue, out)
	layers, saved := st.SnapshotUsage()
	ch <- prometheus.MustNewConstMetric(descSnapshots, prometheus.GaugeValue, float64(layers))
	ch <- prometheus.MustNewConstMetric(descSnapshotBytes, prometheus.GaugeValue, float64(saved))
}
