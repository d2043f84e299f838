package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func newVolumeStatsCmd(o *rootOptions) *cobra.Command {
	var watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "stats NAME [--watch]",
		Short: "A volume's recent IOPS, throughput and latency, as its host measures them",
		Long: "The figures the volume's host reported last (every 5 s) for the time since its previous report:\n" +
			"reads and writes per second, bytes per second, mean and 99th percentile latency at the iSCSI target,\n" +
			"and the time commands waited for the volume's I/O limits (volume qos).\n" +
			"--watch prints them again every --interval until Ctrl-C.",
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if interval < time.Second {
				return fmt.Errorf("--interval %v: at least 1s (hosts report every 5 s)", interval)
			}
			for {
				r, err := o.client().VolumeStats(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if err := o.print(r, func(w *tabwriter.Writer) { printStats(w, r) }); err != nil {
					return err
				}
				if !watch {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(interval):
				}
				fmt.Fprintln(o.out)
			}
		},
	}
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print the figures again every --interval until interrupted")
	cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "how often --watch prints")
	return cmd
}

func printStats(w *tabwriter.Writer, r *api.VolumeStatsReport) {
	if r.Stats == nil {
		fmt.Fprintf(w, "volume %s: no figures yet (its host reports them every 5 s while it serves the volume)\n", r.Volume)
		return
	}
	s := r.Stats
	age := ""
	if r.ReportedAt != nil {
		age = fmt.Sprintf(", reported %s ago", time.Since(*r.ReportedAt).Round(time.Second))
	}
	fmt.Fprintf(w, "volume %s on host %s, over %.1f s%s\n", r.Volume, r.Host, s.WindowSeconds, age)
	fmt.Fprintln(w, "\tIOPS\tTHROUGHPUT\tLATENCY MEAN\tP99")
	fmt.Fprintf(w, "read\t%.0f\t%s/s\t%s\t%s\n", s.ReadIOPS, formatRate(s.ReadBytesPerSec), formatMicros(s.ReadLatencyMeanUs), formatMicros(s.ReadLatencyP99Us))
	fmt.Fprintf(w, "write\t%.0f\t%s/s\t%s\t%s\n", s.WriteIOPS, formatRate(s.WriteBytesPerSec), formatMicros(s.WriteLatencyMeanUs), formatMicros(s.WriteLatencyP99Us))
	if s.Errors > 0 {
		fmt.Fprintf(w, "errors\t%d\n", s.Errors)
	}
	if s.Throttled > 0 || s.Busy > 0 {
		fmt.Fprintf(w, "throttled\t%d commands waited %.2f s in all for the I/O limits; %d answered TASK SET FULL\n",
			s.Throttled, s.ThrottledSeconds, s.Busy)
	}
}

// formatRate is bytes per second with a binary unit.
func formatRate(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}

func formatMicros(us float64) string {
	switch {
	case us == 0:
		return "-"
	case us >= 1000:
		return fmt.Sprintf("%.2f ms", us/1000)
	}
	return fmt.Sprintf("%.0f µs", us)
}
