package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

// ---- resync: bytes copied and time after an outage ----

// resyncFigures are the figures of one outage: bytes copied against bytes
// written during the outage, hostd's own resync time, and the time from
// the return (chunkserver restart, or attach on the new host) until the
// metaserver reports every member in sync.
type resyncFigures struct {
	copied, took, wall *Figure
}

func newResyncFigures(kind string, mib int, copyTarget float64) resyncFigures {
	name := fmt.Sprintf("%s, %d MiB written", kind, mib)
	return resyncFigures{
		copied: &Figure{Group: GroupResync, Name: name, Ours: "MiB copied", Reference: "MiB written",
			Metric: "bytes copied", Unit: "MiB", Direction: LowerIsBetter, Target: copyTarget},
		took: &Figure{Group: GroupResync, Name: name, Ours: "hostd resync", Single: true, Metric: "time (took=)", Unit: "s"},
		wall: &Figure{Group: GroupResync, Name: name, Ours: "return to all in sync", Single: true, Metric: "time", Unit: "s"},
	}
}

func (f resyncFigures) all() []*Figure { return []*Figure{f.copied, f.took, f.wall} }

func (f resyncFigures) record(written int, rs Resync, wall time.Duration) {
	f.copied.OurSamples = append(f.copied.OurSamples, float64(rs.Copied)/(1<<20))
	f.copied.RefSamples = append(f.copied.RefSamples, float64(written))
	f.took.OurSamples = append(f.took.OurSamples, rs.Took.Seconds())
	f.wall.OurSamples = append(f.wall.OurSamples, wall.Seconds())
}

func (r *Runner) resyncGroup(ctx context.Context) error {
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"resync: mirror:2 volumes with --bitmap remb of %d MiB; W MiB are written with `qemu-img bench -w -s 1M -d 8 -c W` "+
			"(sequential from offset 0) during the outage. Chunkserver outage: kill -9 the chunkserver of member 1 of set 0, write, "+
			"wait until the metaserver shows the member degraded, restart it. Host crash: write W MiB on a fresh volume, kill -9 "+
			"the hostd serving it, start another hostd (localcluster AddHostd) and `chunkraid volume attach` the volume there. "+
			"Copied and took= are summed and the longest from hostd's \"resync done ... copied_bytes=N took=D\" lines for that "+
			"volume; the time is from the restart or attach until that line is logged and the metaserver reports every member in sync with no dirty bytes. "+
			"Sizes alternate within each of the runs; every host crash uses a fresh volume and a new host. Target for the chunkserver outage: at most 1.25× the bytes "+
			"written (1 MiB write-intent regions); for the host crash at most 4×: the new host rebuilds its write-intent bitmap from "+
			"the chunks' LOG bitmaps, as the chunkservers answer them from the fine copy in their memory (1 MiB regions), "+
			"while the LOG on disk keeps 64 MiB regions and syncs no more often.", r.cfg.ChunkSize>>20))
	var csFigs, hostFigs []resyncFigures
	for _, w := range r.cfg.ResyncMiB {
		csFigs = append(csFigs, newResyncFigures("chunkserver outage", w, 1.25))
	}
	for _, w := range r.cfg.ResyncMiB {
		hostFigs = append(hostFigs, newResyncFigures("host crash", w, 4))
	}
	for _, f := range csFigs {
		r.add(f.all()...)
	}
	for _, f := range hostFigs {
		r.add(f.all()...)
	}
	// Chunkserver outages, one volume.
	const csVol = "rs-cs"
	if _, err := r.createVolume(ctx, csVol, "mirror:2", r.cfg.ChunkSize, true, "--bitmap", "remb"); err != nil {
		err = fmt.Errorf("creating %s: %w", csVol, err)
		for _, f := range csFigs {
			markErr(f.all(), err)
		}
	} else {
	rounds:
		for round := range r.cfg.Runs {
			for i, w := range r.cfg.ResyncMiB {
				if csFigs[i].copied.Err != nil {
					continue
				}
				if err := r.chunkserverOutage(ctx, csVol, w, csFigs[i]); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					markErr(csFigs[i].all(), fmt.Errorf("run %d: %w", round+1, err))
					r.log.Error("chunkserver outage", "MiB", w, "err", err)
					break rounds // the cluster may not be whole any more
				}
			}
		}
		for _, f := range csFigs {
			r.logFigures(f.all()...)
		}
	}
	// Host crashes: a fresh volume each, on the host about to die.
	host := r.cluster.HostName
	n := 0
hosts:
	for round := range r.cfg.Runs {
		for i, w := range r.cfg.ResyncMiB {
			n++
			next := fmt.Sprintf("bench-host%d", n+1)
			if err := r.hostCrash(ctx, fmt.Sprintf("rs-h%d", n), host, next, w, hostFigs[i]); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				markErr(hostFigs[i].all(), fmt.Errorf("run %d: %w", round+1, err))
				r.log.Error("host crash", "MiB", w, "err", err)
				break hosts
			}
			host = next
		}
	}
	for _, f := range hostFigs {
		r.logFigures(f.all()...)
	}
	return nil
}

// chunkserverOutage kills the chunkserver of member 1 of set 0 of volume,
// writes mib MiB degraded, restarts it and measures the resync.
func (r *Runner) chunkserverOutage(ctx context.Context, volume string, mib int, f resyncFigures) error {
	v, err := r.cluster.Client().GetVolume(ctx, volume)
	if err != nil {
		return err
	}
	if len(v.Sets) == 0 || len(v.Sets[0].Members) < 2 {
		return fmt.Errorf("volume %s has no member 1 in set 0", volume)
	}
	victimName := v.Sets[0].Members[1].Chunkserver
	var victim *localcluster.Proc
	for _, p := range r.cluster.CS {
		if p.Name == victimName {
			victim = p
		}
	}
	if victim == nil {
		return fmt.Errorf("no chunkserver process %s", victimName)
	}
	r.log.Info("chunkserver outage", "volume", volume, "chunkserver", victimName, "MiB", mib)
	if err := victim.Kill(); err != nil {
		return err
	}
	restarted := false
	defer func() {
		if !restarted {
			victim.Start()
		}
	}()
	url := r.cluster.ISCSIURL(volume)
	if _, err := qemuBench(ctx, url, true, 1<<20, 8, mib, 2*time.Minute); err != nil {
		return fmt.Errorf("degraded writes: %w", err)
	}
	if err := r.waitVolume(ctx, volume, "member on "+victimName+" degraded", time.Minute, func(v *api.Volume) bool {
		for _, m := range v.Sets[0].Members {
			if m.Chunkserver == victimName && m.State == api.MemberDegraded {
				return true
			}
		}
		return false
	}); err != nil {
		return err
	}
	mark := logSize(r.cluster.Hostd.Log)
	start := time.Now()
	restarted = true
	if err := victim.Start(); err != nil {
		return fmt.Errorf("restarting %s: %w", victimName, err)
	}
	rs, err := r.waitResync(ctx, r.cluster.Hostd.Log, mark, volume)
	if err != nil {
		return err
	}
	wall := time.Since(start)
	f.record(mib, rs, wall)
	return nil
}

// hostCrash creates volume on host, writes mib MiB, kills host with
// SIGKILL, attaches the volume on a new host next and measures the
// recovery there.
func (r *Runner) hostCrash(ctx context.Context, volume, host, next string, mib int, f resyncFigures) error {
	args := cliArgs(r.cluster, "volume", "create", volume, "--size", fmt.Sprint(r.cfg.ChunkSize),
		"--layout", "mirror:2", "--bitmap", "remb", "--host", host)
	if _, err := runTool(ctx, time.Minute, r.bin, args...); err != nil {
		return err
	}
	if err := r.cluster.WaitTargetOn(ctx, host, volume, time.Minute); err != nil {
		return err
	}
	r.log.Info("starting a second host", "name", next)
	p, err := r.cluster.AddHostd(ctx, next)
	if err != nil {
		return fmt.Errorf("starting hostd %s: %w", next, err)
	}
	if _, err := qemuBench(ctx, r.cluster.ISCSIURLOn(host, volume), true, 1<<20, 8, mib, 2*time.Minute); err != nil {
		return fmt.Errorf("writes before the crash: %w", err)
	}
	r.log.Info("host crash", "host", host, "volume", volume, "MiB", mib)
	if err := r.cluster.Hosts[host].Kill(); err != nil {
		return err
	}
	start := time.Now()
	if _, err := runTool(ctx, time.Minute, r.bin, cliArgs(r.cluster, "volume", "attach", volume, "--host", next)...); err != nil {
		return err
	}
	if err := r.cluster.WaitTargetOn(ctx, next, volume, time.Minute); err != nil {
		return err
	}
	rs, err := r.waitResync(ctx, p.Log, 0, volume)
	if err != nil {
		return err
	}
	wall := time.Since(start)
	f.record(mib, rs, wall)
	return nil
}

func inSync(v *api.Volume) bool {
	for _, s := range v.Sets {
		if s.DirtyBytes != 0 {
			return false
		}
		for _, m := range s.Members {
			if m.State != api.MemberInSync {
				return false
			}
		}
	}
	return true
}

// waitVolume polls the metaserver every 50 ms until ok holds for volume.
func (r *Runner) waitVolume(ctx context.Context, volume, what string, timeout time.Duration, ok func(*api.Volume) bool) error {
	return waitVolumeOn(ctx, r.cluster, volume, what, timeout, ok)
}

// waitVolumeOn is waitVolume on cluster c.
func waitVolumeOn(ctx context.Context, c *localcluster.Cluster, volume, what string, timeout time.Duration, ok func(*api.Volume) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		v, err := c.Client().GetVolume(ctx, volume)
		if err == nil && ok(v) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("volume %s: %s: not within %v (last error: %v)", volume, what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func logSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// waitResync waits until the hostd log at path has gained, after byte
// offset from, a "resync done" line for volume, and then until the
// metaserver reports every member of it in sync. The metaserver alone is
// not enough: right after an attach it still shows the state the dead host
// last reported, before the new host has read the members' bitmaps.
func (r *Runner) waitResync(ctx context.Context, path string, from int64, volume string) (Resync, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return Resync{}, err
		}
		if from > int64(len(b)) {
			from = 0
		}
		rs, err := ParseResyncs(string(b[from:]), volume)
		if err != nil {
			return Resync{}, err
		}
		if rs.Count > 0 {
			if err := r.waitVolume(ctx, volume, "every member in sync", 5*time.Minute, inSync); err != nil {
				return Resync{}, err
			}
			return rs, nil
		}
		if time.Now().After(deadline) {
			return Resync{}, fmt.Errorf("%s logged no \"resync done\" for %s within 5m", path, volume)
		}
		select {
		case <-ctx.Done():
			return Resync{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
