package cli

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// qosFlags are the I/O limit flags of volume create and volume qos.
type qosFlags struct {
	iops, readIOPS, writeIOPS int64
	bps, readBPS, writeBPS    string
	burst                     time.Duration
	fs                        *pflag.FlagSet
}

func (q *qosFlags) register(fs *pflag.FlagSet) {
	q.fs = fs
	fs.Int64Var(&q.iops, "iops", 0, "limit reads and writes together to this many commands a second")
	fs.Int64Var(&q.readIOPS, "read-iops", 0, "limit reads to this many a second")
	fs.Int64Var(&q.writeIOPS, "write-iops", 0, "limit writes (and trims) to this many a second")
	fs.StringVar(&q.bps, "bps", "", "limit bytes read and written together a second, e.g. 200MiB")
	fs.StringVar(&q.readBPS, "read-bps", "", "limit bytes read a second")
	fs.StringVar(&q.writeBPS, "write-bps", "", "limit bytes written a second")
	fs.DurationVar(&q.burst, "burst", api.QoSDefaultBurst, "how much of each limit an idle volume may use at once, as a time at its rate")
}

// given reports whether any limit flag was given.
func (q *qosFlags) given() bool {
	for _, name := range []string{"iops", "read-iops", "write-iops", "bps", "read-bps", "write-bps", "burst"} {
		if q.fs.Changed(name) {
			return true
		}
	}
	return false
}

// build turns the flags into limits, each with a burst of --burst at its
// rate. A zero or negative limit, a bad size or a burst that holds less
// than one command is an error naming the flag.
func (q *qosFlags) build() (api.QoS, error) {
	var out api.QoS
	if q.burst <= 0 {
		return out, fmt.Errorf("--burst %s: give a positive time such as 1s or 500ms", q.burst)
	}
	rates := map[string]int64{"iops": q.iops, "read-iops": q.readIOPS, "write-iops": q.writeIOPS}
	for name, s := range map[string]string{"bps": q.bps, "read-bps": q.readBPS, "write-bps": q.writeBPS} {
		if !q.fs.Changed(name) {
			continue
		}
		n, err := parseSize(s)
		if err != nil {
			return out, fmt.Errorf("--%s: %w", name, err)
		}
		rates[name] = n
	}
	for _, l := range out.Limits() {
		if !q.fs.Changed(l.Flag) {
			continue
		}
		rate := rates[l.Flag]
		if rate <= 0 {
			return out, fmt.Errorf("--%s %d: a limit must be positive; leave the flag out for no limit (volume qos NAME --clear removes every limit)", l.Flag, rate)
		}
		exact := float64(rate) * q.burst.Seconds()
		least, unit := 1.0, "command"
		if l.Bytes {
			least, unit = api.QoSBlock, "block of 4 KiB"
		}
		if exact < least {
			return out, fmt.Errorf("--burst %s holds %.3g of --%s's %s at its rate, less than one %s: no command could pass; give a longer --burst",
				q.burst, exact, l.Flag, describeRate(rate, l.Bytes), unit)
		}
		*l.Limit = api.Limit{Rate: rate, Burst: int64(min(math.Ceil(exact), math.MaxInt64/2))}
	}
	if out.IsZero() && q.fs.Changed("burst") {
		return out, errors.New("--burst applies to the limits given with it (--iops, --bps and the others); none was given")
	}
	return out, nil
}

// describeRate prints a rate of commands or bytes a second.
func describeRate(n int64, bytes bool) string {
	if bytes {
		return formatSize(n) + "/s"
	}
	return strconv.FormatInt(n, 10) + " IOPS"
}

// printQoS prints a volume's limits, one per line.
func printQoS(w *tabwriter.Writer, q api.QoS) {
	if q.IsZero() {
		fmt.Fprintf(w, "QoS:\tnone\n")
		return
	}
	first := true
	for _, l := range q.Limits() {
		if l.Limit.Rate == 0 {
			continue
		}
		label := ""
		if first {
			label, first = "QoS:", false
		}
		burst := strconv.FormatInt(l.Limit.Burst, 10)
		if l.Bytes {
			burst = formatSize(l.Limit.Burst)
		}
		fmt.Fprintf(w, "%s\t%s %s, burst %s\n", label, strings.ReplaceAll(l.Flag, "-", " "), describeRate(l.Limit.Rate, l.Bytes), burst)
	}
}

// newVolumeQoSCmd returns "volume qos": show, set or clear a volume's I/O
// limits.
func newVolumeQoSCmd(o *rootOptions) *cobra.Command {
	var (
		qf    qosFlags
		clear bool
	)
	cmd := &cobra.Command{
		Use:   "qos NAME [--iops N] [--read-iops N] [--write-iops N] [--bps SIZE] [--read-bps SIZE] [--write-bps SIZE] [--burst 1s] | --clear",
		Short: "Show, set or clear a volume's I/O limits",
		Long: `Show, set or clear the I/O limits of a volume: commands a second (IOPS) and
bytes a second, for reads, writes or both together. The limits given replace
all the volume's limits; --clear removes them; without flags the command shows
them. Each limit lets an idle volume use --burst of its rate at once.

The host serving the volume applies a change at once, without a detach. A
command over a limit waits in the target; one that would wait longer than the
host's cap (hostd --qos-wait-cap, 2s) is answered TASK SET FULL and the
initiator retries it. Resync and rebuild copies do not count against the
limits.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, c, name := cmd.Context(), o.client(), args[0]
			switch {
			case clear && qf.given():
				return errors.New("--clear removes every limit: give it alone")
			case clear:
				if err := c.ClearVolumeQoS(ctx, name); err != nil {
					return err
				}
				fmt.Fprintf(o.out, "Volume %s has no I/O limits.\n", name)
				return nil
			case !qf.given():
				v, err := c.GetVolume(ctx, name)
				if err != nil {
					return err
				}
				return o.print(v.QoS, func(w *tabwriter.Writer) { printQoS(w, v.QoS) })
			}
			q, err := qf.build()
			if err != nil {
				return err
			}
			v, err := c.SetVolumeQoS(ctx, name, q)
			if err != nil {
				return err
			}
			return o.print(v.QoS, func(w *tabwriter.Writer) { printQoS(w, v.QoS) })
		},
	}
	qf.register(cmd.Flags())
	cmd.Flags().BoolVar(&clear, "clear", false, "remove every I/O limit of the volume")
	return cmd
}
