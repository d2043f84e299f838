package bench

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// benchHost is the host the nbd group's volume is attached to: the bench
// itself, registered with the cluster's join token and heartbeating, so
// that the metaserver issues it writable NBD exports of the volume's
// chunks (and never fails the volume over to a live host).
const benchHost = "bench-nbd"

// chunkExport attaches a volume of one mirror:2 set to benchHost and
// finds member 0: its NBD URI, as the metaserver issues it to the host,
// and the path of its chunk file.
func (r *Runner) chunkExport(ctx context.Context) (uri, file string, err error) {
	c := r.cluster
	join, err := os.ReadFile(c.JoinTokenFile())
	if err != nil {
		return "", "", err
	}
	hc := c.Client().WithToken(strings.TrimSpace(string(join)))
	reg, err := hc.RegisterHost(ctx, api.RegisterHostRequest{Name: benchHost, ISCSIAddr: "127.0.0.1:9"})
	if err != nil {
		return "", "", fmt.Errorf("registering host %s: %w", benchHost, err)
	}
	hc.SetToken(reg.Credential)
	beat, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for beat.Err() == nil {
			if err := hc.HostHeartbeat(beat, reg.ID); err != nil && beat.Err() == nil {
				r.log.Warn("heartbeat of the bench host", "err", err)
			}
			select {
			case <-beat.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	r.atExit(func() error { stop(); <-done; return nil })
	args := []string{"volume", "create", "nbd", "--size", fmt.Sprint(r.cfg.ChunkSize), "--layout", "mirror:2", "--host", benchHost}
	if _, err := runTool(ctx, time.Minute, r.bin, cliArgs(c, args...)...); err != nil {
		return "", "", err
	}
	hv, err := hc.HostVolumes(ctx, reg.ID, 0, 0)
	if err != nil {
		return "", "", err
	}
	i := slices.IndexFunc(hv.Volumes, func(v api.Volume) bool { return v.Name == "nbd" })
	if i < 0 || len(hv.Volumes[i].Sets) == 0 || len(hv.Volumes[i].Sets[0].Members) == 0 {
		return "", "", fmt.Errorf("host %s was not given the volume's members", benchHost)
	}
	m := hv.Volumes[i].Sets[0].Members[0]
	pattern := filepath.Join(c.Dir(), "chunkservers", "*", m.ChunkID+".chunk")
	deadline := time.Now().Add(30 * time.Second)
	for {
		files, _ := filepath.Glob(pattern)
		if len(files) == 1 {
			file = files[0]
			break
		}
		if time.Now().After(deadline) {
			return "", "", fmt.Errorf("chunk file %s did not appear (found %d)", pattern, len(files))
		}
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The export must answer a handshake before fio is pointed at it.
	for {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		nc, err := nbd.Dial(dctx, nbd.ClientConfig{Addr: m.Addr, Export: m.Export})
		cancel()
		if err == nil {
			nc.Close()
			return "nbd://" + m.Addr + "/" + url.PathEscape(m.Export), file, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", "", fmt.Errorf("NBD export %s on %s: %w", m.Export, m.Addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (r *Runner) nbdGroup(ctx context.Context) error {
	ours, chunkFile, err := r.chunkExport(ctx)
	if err != nil {
		return err
	}
	st, err := os.Stat(chunkFile)
	if err != nil {
		return err
	}
	size := st.Size()
	// The reference file: same size, sparse, same file system as the chunk.
	refFile := filepath.Join(filepath.Dir(r.cluster.Dir()), "nbdkit-ref.img")
	if err := os.WriteFile(refFile, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(refFile, size); err != nil {
		return err
	}
	port, err := localcluster.FreePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	r.log.Info("starting nbdkit", "file", refFile, "addr", addr)
	p, err := startDaemon(ctx, r.logs, "nbdkit", addr, "nbdkit", "-f", "-p", fmt.Sprint(port), "-i", "127.0.0.1", "file", refFile)
	if err != nil {
		return fmt.Errorf("starting nbdkit: %w", err)
	}
	r.atExit(func() error { return p.Stop(10 * time.Second) })
	ref := "nbd://" + addr + "/"

	// Fill both files once so that reads find data and writes overwrite
	// allocated blocks on either side.
	for _, u := range []string{ours, ref} {
		r.log.Info("prefilling", "uri", u, "bytes", size)
		if _, err := runFio(ctx, r.work, fioJob{URI: u, RW: "write", BS: "1m", Depth: 8, Size: size}); err != nil {
			return fmt.Errorf("prefill %s: %w", u, err)
		}
	}
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"nbd: fio with its nbd engine, one job over the whole %d MiB export for %s per run: 4K random I/O "+
			"(randrepeat=1: the same offsets on both sides) and 1 MiB sequential I/O; mean and p99 are of fio's total latency "+
			"(lat_ns, submission to completion, --lat_percentiles=1). Ours is a chunkserver of the local cluster exporting one chunk, "+
			"the reference `nbdkit -f -p PORT -i 127.0.0.1 file` on a sparse file of the same size in the same directory tree; "+
			"both were filled once with 1 MiB writes first. CPU per op: the user and system CPU time (/proc/PID/stat) the serving "+
			"process (the chunkserver holding the chunk, nbdkit) used during a 4K QD32 run, divided by fio's count of its requests.", size>>20, r.cfg.RunTime))
	r.nbd = &nbdLoad{ours: ours, ref: ref, size: size, refProc: p, csName: filepath.Base(filepath.Dir(chunkFile))}
	var csProc *localcluster.Proc
	for _, q := range r.cluster.CS {
		if q.Name == r.nbd.csName {
			csProc = q
		}
	}
	if csProc == nil {
		return fmt.Errorf("no chunkserver process is named %s, the directory of the chunk %s", r.nbd.csName, chunkFile)
	}

	const cs, kit = "chunkserver", "nbdkit"
	for _, c := range []struct {
		rw, bs string
		qd     int
	}{
		{"randwrite", "4k", 1}, {"randwrite", "4k", 32}, {"randread", "4k", 1}, {"randread", "4k", 32},
		{"write", "1m", 8}, {"read", "1m", 8},
	} {
		var name string
		var rate *Figure
		if c.bs == "4k" {
			name = fmt.Sprintf("4K %s QD%d", c.rw, c.qd)
			rate = iopsFigure(GroupNBD, name, cs, kit, 0.8)
		} else {
			name = fmt.Sprintf("1M seq %s QD%d", c.rw, c.qd)
			rate = bwFigure(GroupNBD, name, cs, kit, 0.8)
		}
		mean := latencyFigure(GroupNBD, name, cs, kit, 1.25)
		p99 := p99Figure(GroupNBD, name, cs, kit, 1.5)
		figs := []*Figure{rate, mean, p99}
		var oursCPU, refCPU []cpuMeter
		if c.bs == "4k" && c.qd > 1 {
			// CPU per request of the serving process: the chunkserver
			// holding the chunk, nbdkit.
			cpu := cpuFigure(GroupNBD, name, cs, kit, 1)
			figs = append(figs, cpu)
			oursCPU = []cpuMeter{{procs: []*localcluster.Proc{csProc}, dst: []*[]float64{&cpu.OurSamples}}}
			refCPU = []cpuMeter{{procs: []*localcluster.Proc{p}, dst: []*[]float64{&cpu.RefSamples}}}
		}
		r.add(figs...)
		run := func(uri string, meters []cpuMeter) func(context.Context) ([]float64, error) {
			return func(ctx context.Context) ([]float64, error) {
				return metered(ctx, meters, func(ctx context.Context) ([]float64, int64, error) {
					res, err := runFio(ctx, r.work, fioJob{URI: uri, RW: c.rw, BS: c.bs, Depth: c.qd, Size: size, Runtime: r.cfg.RunTime})
					if err != nil {
						return nil, 0, err
					}
					iops, bw, lat, p99, ops := res.ReadIOPS, res.ReadBW, res.ReadLatency, res.ReadP99, res.ReadIOs
					if c.rw == "randwrite" || c.rw == "write" {
						iops, bw, lat, p99, ops = res.WriteIOPS, res.WriteBW, res.WriteLatency, res.WriteP99, res.WriteIOs
					}
					if p99 == 0 {
						return nil, 0, fmt.Errorf("%w: fio reported no 99th percentile", ErrToolOutput)
					}
					v := iops
					if c.bs != "4k" {
						v = bw / 1e6
					}
					return []float64{v, micros(lat), micros(p99)}, ops, nil
				})
			}
		}
		oursDst := append([][]*[]float64{{&rate.OurSamples}, {&mean.OurSamples}, {&p99.OurSamples}}, meterDsts(oursCPU)...)
		refDst := append([][]*[]float64{{&rate.RefSamples}, {&mean.RefSamples}, {&p99.RefSamples}}, meterDsts(refCPU)...)
		err := r.alternate(ctx, GroupNBD+": "+name, []*side{
			{name: cs, run: run(ours, oursCPU), dst: oursDst, figs: figs},
			{name: kit, run: run(ref, refCPU), dst: refDst, figs: figs},
		})
		r.logFigures(figs...)
		if err != nil {
			return err
		}
	}
	return nil
}
