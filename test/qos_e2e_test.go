package test

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/localcluster"
	"github.com/chunkraid/chunkraid/metaserver/api"
)

var benchDone = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// qemuBench runs qemu-img bench against a volume and returns the time it
// reported: count requests of 4 KiB at queue depth depth, each 1 MiB after
// the last (wrapping within 64 MiB), writes when write. It may run on a
// goroutine of its own: it reports failure as an error.
func qemuBench(c *localcluster.Cluster, vol string, write bool, depth, count int) (time.Duration, error) {
	args := []string{"bench", "-f", "raw", "-t", "none", "-s", "4096", "-S", "1048576",
		"-d", strconv.Itoa(depth), "-c", strconv.Itoa(count)}
	if write {
		args = append(args, "-w")
	}
	out, err := exec.Command("qemu-img", append(args, c.ISCSIURL(vol))...).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := benchDone.FindStringSubmatch(string(out))
	if m == nil {
		return 0, fmt.Errorf("qemu-img bench printed no time:\n%s", out)
	}
	secs, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// TestQoSTwoVolumes: a volume limited to 400 writes a second (burst 100)
// never goes faster than its limit plus its burst, written at queue depth
// 32 beside an unlimited volume at queue depth 1 on the same host; the
// unlimited volume's figures alone and beside the noisy one are reported,
// not asserted. A limit changed while the noisy volume is being written
// takes effect without a detach: the same run ends far sooner than its old
// limit allows, and the volume's epoch is unchanged.
func TestQoSTwoVolumes(t *testing.T) {
	t.Parallel()
	needTools(t, "qemu-img")
	c := startCluster(t, testChunk)
	ctx := t.Context()
	const (
		rate  = 400
		burst = 100
	)
	cli(t, c, "volume", "create", "noisy", "--size", "64MiB", "--host", c.HostName, "--write-iops", strconv.Itoa(rate), "--burst", "250ms")
	cli(t, c, "volume", "create", "quiet", "--size", "64MiB", "--host", c.HostName)
	for _, v := range []string{"noisy", "quiet"} {
		if err := c.WaitTarget(ctx, v, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if out := cli(t, c, "volume", "show", "noisy"); !strings.Contains(out, "write iops 400 IOPS, burst 100") {
		t.Fatalf("volume show does not give the limit:\n%s", out)
	}
	if out := cliFail(t, c, "volume", "qos", "noisy", "--iops", "0"); !strings.Contains(out, "a limit must be positive") {
		t.Errorf("--iops 0: %s", out)
	}
	if out := cliFail(t, c, "volume", "qos", "noisy", "--bps", "64KiB", "--burst", "10ms"); !strings.Contains(out, "less than one block") {
		t.Errorf("a burst below one command: %s", out)
	}

	const quietN, noisyN = 1000, 1200
	must := func(d time.Duration, err error) time.Duration {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	alone := must(qemuBench(c, "quiet", true, 1, quietN))
	var (
		wg       sync.WaitGroup
		noisyT   time.Duration
		noisyErr error
	)
	wg.Go(func() { noisyT, noisyErr = qemuBench(c, "noisy", true, 32, noisyN) })
	time.Sleep(200 * time.Millisecond) // the noisy volume is at its limit
	besideT, besideErr := qemuBench(c, "quiet", true, 1, quietN)
	wg.Wait()
	must(noisyT, noisyErr)
	must(besideT, besideErr)

	// At most burst + rate × t writes in t seconds. qemu-img times from
	// before its first request to after its last reply, and prints
	// milliseconds: its figure is at most 0.5 ms short.
	least := time.Duration(float64(noisyN-burst)/rate*float64(time.Second)) - time.Millisecond
	if noisyT < least {
		t.Errorf("%d writes to the volume limited to %d a second (burst %d) took %s: faster than the limit allows (at least %s)",
			noisyN, rate, burst, noisyT, least)
	}
	iops := func(n int, d time.Duration) float64 { return float64(n) / d.Seconds() }
	t.Logf("noisy volume, limit %d writes/s burst %d, QD32: %d writes in %s = %.0f IOPS", rate, burst, noisyN, noisyT.Round(time.Millisecond), iops(noisyN, noisyT))
	t.Logf("quiet volume, unlimited, QD1 alone: %.0f IOPS, mean latency %s", iops(quietN, alone), (alone / quietN).Round(time.Microsecond))
	t.Logf("quiet volume, unlimited, QD1 beside the noisy one: %.0f IOPS, mean latency %s", iops(quietN, besideT), (besideT / quietN).Round(time.Microsecond))

	var st *api.VolumeStatsReport
	waitFor(t, 20*time.Second, "the host to report the throttled time", func() bool {
		var err error
		st, err = c.Client().VolumeStats(ctx, "noisy")
		return err == nil && st.Stats != nil && st.Stats.Throttled > 0
	})
	if st.Stats.ThrottledSeconds <= 0 || st.Stats.Busy != 0 {
		t.Errorf("noisy volume stats: %+v", st.Stats)
	}
	t.Logf("chunkraid volume stats noisy:\n%s", cli(t, c, "volume", "stats", "noisy"))

	// A live change: 50 writes a second (burst 12) would hold 600 writes
	// for at least 11.7 s; the limit is raised 1 s into the run.
	cli(t, c, "volume", "qos", "noisy", "--write-iops", "50", "--burst", "250ms")
	before, err := c.Client().GetVolume(ctx, "noisy")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the host applies the new limit
	raised := make(chan error, 1)
	raise := time.AfterFunc(time.Second, func() {
		_, err := c.Client().SetVolumeQoS(ctx, "noisy", api.QoS{WriteIOPS: api.Limit{Rate: 100000}})
		raised <- err
	})
	defer raise.Stop()
	took := must(qemuBench(c, "noisy", true, 32, 600))
	if err := <-raised; err != nil {
		t.Fatal(err)
	}
	if took > 8*time.Second {
		t.Errorf("600 writes took %s with the limit raised from 50 to 100000 a second after 1 s: the new limit did not take effect", took)
	}
	after, err := c.Client().GetVolume(ctx, "noisy")
	if err != nil {
		t.Fatal(err)
	}
	if after.Epoch != before.Epoch || after.Host != before.Host {
		t.Errorf("the limit change moved the volume: epoch %d -> %d, host %s -> %s", before.Epoch, after.Epoch, before.Host, after.Host)
	}
	t.Logf("600 writes with the limit raised from 50 to 100000 a second 1 s in: %s", took.Round(time.Millisecond))
	if out := cli(t, c, "volume", "qos", "noisy", "--clear"); !strings.Contains(out, "no I/O limits") {
		t.Errorf("--clear: %s", out)
	}
	if out := cli(t, c, "volume", "qos", "noisy"); !strings.Contains(out, "none") {
		t.Errorf("volume qos after --clear: %q", out)
	}
}
