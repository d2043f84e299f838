package metaserver

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the metaserver's Prometheus series, registered on
// Config.Metrics. Their labels are bounded: routes are chi's patterns
// ("/api/v1/volumes/{name}"), never paths.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(s *Server, reg *prometheus.Registry) *metrics {
	m := &metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chunkraid_metaserver_api_requests_total",
			Help: "API requests answered, by method, route pattern and HTTP status.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chunkraid_metaserver_api_request_duration_seconds",
			Help:    "Time to answer an API request, by method and route pattern (long polls wait up to their wait).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"method", "route"}),
	}
	reg.MustRegister(m.requests, m.duration,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "chunkraid_metaserver_leader",
			Help: "1 while this metaserver holds the leader lock and runs the failure detector, replacement and retirement; 0 otherwise.",
		}, func() float64 {
			if s.leading.Load() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "chunkraid_metaserver_long_polls_waiting",
			Help: "Long polls of daemons waiting for a change.",
		}, func() float64 { return float64(s.waiting.Load()) }),
		&clusterCollector{s: s},
	)
	return m
}

// observe counts a request once its handler has answered.
func (m *metrics) observe(r *http.Request, status int, took time.Duration) {
	route := "unmatched"
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
		route = rc.RoutePattern()
	}
	m.requests.WithLabelValues(r.Method, route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(r.Method, route).Observe(took.Seconds())
}

// handler serves the exposition.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// clusterCollector reads the cluster's state from PostgreSQL at each
// scrape: capacity, and the members, chunkservers and hosts by state.
type clusterCollector struct{ s *Server }

var (
	descCapacity = prometheus.NewDesc("chunkraid_cluster_bytes",
		"The cluster's capacity in bytes: raw (disks of online chunkservers), free, provisioned (chunks × chunk size), allocated (written) and provisionable (what the capacity guard still allows).",
		[]string{"kind"}, nil)
	descMembers = prometheus.NewDesc("chunkraid_members",
		"Members of every volume's sets, by state as the metaserver records it.", []string{"state"}, nil)
	descServers = prometheus.NewDesc("chunkraid_chunkservers",
		"Registered chunkservers, by state (online, offline, full: online with a nearly full disk).", []string{"state"}, nil)
	descHosts = prometheus.NewDesc("chunkraid_hosts",
		"Registered hosts, by state.", []string{"state"}, nil)
	descVolumes = prometheus.NewDesc("chunkraid_volumes", "Volumes.", nil, nil)
	descRebuild = prometheus.NewDesc("chunkraid_rebuild_remaining_bytes",
		"Bytes of rebuilding members above their rebuild watermark: what the rebuilds under way still have to go over.", nil, nil)
	descUp = prometheus.NewDesc("chunkraid_metaserver_database_up",
		"1 if the last scrape could read the cluster's state from PostgreSQL.", nil, nil)
)

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCapacity, descMembers, descServers, descHosts, descVolumes, descRebuild, descUp} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	up := 0.0
	defer func() { ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up) }()
	if !c.s.isReady() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cl, err := c.s.st.cluster(ctx)
	if err != nil {
		c.s.log.Warn("metrics: reading the cluster", "err", err)
		return
	}
	for kind, v := range map[string]int64{"raw": cl.RawCapacityBytes, "free": cl.RawFreeBytes, "provisioned": cl.ProvisionedBytes,
		"allocated": cl.AllocatedBytes, "provisionable": cl.ProvisionableBytes} {
		ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(v), kind)
	}
	st, err := c.s.st.stateCounts(ctx, c.s.cfg.OfflineAfter)
	if err != nil {
		c.s.log.Warn("metrics: counting states", "err", err)
		return
	}
	for state, n := range st.members {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(n), state)
	}
	for state, n := range st.servers {
		ch <- prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(n), state)
	}
	for state, n := range st.hosts {
		ch <- prometheus.MustNewConstMetric(descHosts, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(st.volumes))
	ch <- prometheus.MustNewConstMetric(descRebuild, prometheus.GaugeValue, float64(st.rebuildRemaining))
	up = 1
}

// stateCounts are the counts clusterCollector exports.
type stateCounts struct {
	members, servers, hosts map[string]int64
	volumes                 int64
	rebuildRemaining        int64
}

// stateCounts counts the members by state, the chunkservers and hosts by
// state, the volumes, and what rebuilds still have to go over.
func (st *store) stateCounts(ctx context.Context, offlineAfter time.Duration) (*stateCounts, error) {
	out := &stateCounts{members: map[string]int64{}, servers: map[string]int64{}, hosts: map[string]int64{}}
	servers, err := st.listChunkservers(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range servers {
		switch {
		case s.Full && s.State == "online":
			out.servers["full"]++
		default:
			out.servers[s.State]++
		}
	}
	hosts, err := st.listHosts(ctx)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		out.hosts[h.State]++
	}
	err = st.read(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT member_state, count(*) FROM chunks WHERE state = 'active' GROUP BY member_state`)
		if err != nil {
			return err
		}
		var state string
		var n int64
		if _, err := pgx.ForEachRow(rows, []any{&state, &n}, func() error { out.members[state] = n; return nil }); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM volumes),
			       (SELECT coalesce(sum(size_bytes - rebuild_watermark), 0)::bigint FROM chunks
			        WHERE state = 'active' AND member_state = 'rebuilding')`).Scan(&out.volumes, &out.rebuildRemaining)
	})
	if err != nil {
		return nil, fmt.Errorf("count states: %w", err)
	}
	return out, nil
}
