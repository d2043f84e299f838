package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// ---- qos: a volume's latency beside a limited and an unlimited writer ----

const (
	qosLimit      = 1000 // the noisy volume's write IOPS limit
	qosBurstLabel = "100ms"
	qosBurst      = qosLimit / 10
)

func (r *Runner) qosGroup(ctx context.Context) error {
	const quietName = "unlimited volume 4K randwrite QD1"
	limitedMean := latencyFigure(GroupQoS, quietName, "beside a writer limited to 1000 IOPS", "alone", 0)
	limitedP99 := p99Figure(GroupQoS, quietName, "beside a writer limited to 1000 IOPS", "alone", 0)
	freeMean := latencyFigure(GroupQoS, quietName, "beside an unlimited writer", "alone", 0)
	freeP99 := p99Figure(GroupQoS, quietName, "beside an unlimited writer", "alone", 0)
	// The limited volume's IOPS against its limit: at most the limit plus
	// its burst over the run.
	rate := &Figure{Group: GroupQoS, Name: "limited volume 4K write QD32", Ours: "limited volume", Reference: "its limit",
		Metric: "IOPS", Unit: "IOPS", Direction: LowerIsBetter,
		Target: 1 + float64(qosBurst)/(qosLimit*r.cfg.RunTime.Seconds()) + 0.01}
	all := []*Figure{limitedMean, limitedP99, freeMean, freeP99, rate}
	if !r.cliHasFlag(ctx, "--write-iops", "volume", "create") {
		for _, f := range all {
			f.Unavailable = "`chunkraid volume create` has no --write-iops flag in this build"
		}
		r.add(all...)
		return nil
	}
	size := r.cfg.ChunkSize
	if _, err := r.createVolume(ctx, "qos-noisy", "mirror:2", size, true,
		"--write-iops", fmt.Sprint(qosLimit), "--burst", qosBurstLabel); err != nil {
		return err
	}
	if _, err := r.createVolume(ctx, "qos-quiet", "mirror:2", size, true); err != nil {
		return err
	}
	r.add(all...)
	noisy, quiet := r.cluster.ISCSIURL("qos-noisy"), r.cluster.ISCSIURL("qos-quiet")
	r.report.Notes = append(r.report.Notes, fmt.Sprintf(
		"qos: two %d MiB mirror:2 volumes on the one host. The unlimited volume's 4K random writes at QD1 (qemu-io) are "+
			"timed alone, beside the other volume written at QD32 (qemu-img bench) under a limit of %d writes a second "+
			"(burst %s), and beside it with no limit; sides alternate in every round. The limited volume's IOPS "+
			"(qemu-img bench, %d writes at QD32) against its limit; target: at most the limit plus its burst over the run.",
		size>>20, qosLimit, qosBurstLabel, int(qosLimit*r.cfg.RunTime.Seconds())))
	setLimit := func(ctx context.Context, limited bool) error {
		var err error
		if limited {
			_, err = r.cluster.Client().SetVolumeQoS(ctx, "qos-noisy", api.QoS{WriteIOPS: api.Limit{Rate: qosLimit, Burst: qosBurst}})
		} else {
			err = r.cluster.Client().ClearVolumeQoS(ctx, "qos-noisy")
		}
		// The host applies it through its long poll.
		time.Sleep(300 * time.Millisecond)
		return err
	}
	offsets := randomOffsets(5, r.qd1Ops(), size)
	timeout := time.Duration(len(offsets))*20*time.Millisecond + time.Minute
	quietRun := func(ctx context.Context) ([]float64, error) {
		lat, err := qemuIO(ctx, quiet, true, offsets, timeout)
		if err != nil {
			return nil, err
		}
		return []float64{micros(MeanDuration(lat)), micros(Percentile(lat, 99))}, nil
	}
	beside := func(limited bool) func(ctx context.Context) ([]float64, error) {
		return func(ctx context.Context) ([]float64, error) {
			if err := setLimit(ctx, limited); err != nil {
				return nil, err
			}
			nctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				_, err := qemuBenchStep(nctx, noisy, true, 4096, 32, 1<<20, 2_000_000, 10*time.Minute)
				done <- err
			}()
			time.Sleep(200 * time.Millisecond) // past the noisy volume's burst
			v, err := quietRun(ctx)
			stop()
			if nerr := <-done; nerr != nil && nctx.Err() == nil {
				return nil, fmt.Errorf("the noisy writer: %w", nerr)
			}
			return v, err
		}
	}
	if _, err := qemuIO(ctx, quiet, true, offsets, timeout); err != nil { // warm-up
		markErr(all, err)
		return nil
	}
	sides := []*side{
		{name: "alone", run: quietRun, figs: []*Figure{limitedMean, limitedP99, freeMean, freeP99},
			dst: [][]*[]float64{{&limitedMean.RefSamples, &freeMean.RefSamples}, {&limitedP99.RefSamples, &freeP99.RefSamples}}},
		{name: "beside a limited writer", run: beside(true), figs: []*Figure{limitedMean, limitedP99},
			dst: [][]*[]float64{{&limitedMean.OurSamples}, {&limitedP99.OurSamples}}},
		{name: "beside an unlimited writer", run: beside(false), figs: []*Figure{freeMean, freeP99},
			dst: [][]*[]float64{{&freeMean.OurSamples}, {&freeP99.OurSamples}}},
	}
	if err := r.alternate(ctx, GroupQoS+": "+quietName, sides); err != nil {
		return err
	}
	if err := setLimit(ctx, true); err != nil {
		return err
	}
	count := int(qosLimit * r.cfg.RunTime.Seconds())
	limitSide := &side{name: "limited volume", figs: []*Figure{rate}, dst: [][]*[]float64{{&rate.OurSamples}},
		run: func(ctx context.Context) ([]float64, error) {
			time.Sleep(time.Duration(qosBurst) * time.Second / qosLimit) // the bucket fills again
			q, err := qemuBenchStep(ctx, noisy, true, 4096, 32, 1<<20, count, time.Minute)
			if err != nil {
				return nil, err
			}
			rate.RefSamples = append(rate.RefSamples, qosLimit)
			return []float64{q.IOPS()}, nil
		}}
	if err := r.alternate(ctx, GroupQoS+": limited volume 4K write QD32", []*side{limitSide}); err != nil {
		return err
	}
	r.logFigures(all...)
	return nil
}
