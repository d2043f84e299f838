package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// newClusterCmd returns "chunkraid cluster": the cluster's settings and
// capacity.
func newClusterCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "cluster",
		Short: "Show the cluster's settings and raw capacity",
		Long: `Show the cluster's chunk size, timeout budget and capacity: the raw capacity
and free space of the online chunkservers' disks, and the raw space allocated
to chunks (chunks × chunk size; chunks are thin, so that is what they may grow
to, not what is written).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client().Cluster(cmd.Context())
			if err != nil {
				return err
			}
			return o.print(c, func(w *tabwriter.Writer) { printCluster(w, c) })
		},
	}
}

func printCluster(w *tabwriter.Writer, c *api.Cluster) {
	ms := func(n int64) time.Duration { return time.Duration(n) * time.Millisecond }
	fmt.Fprintf(w, "Chunk size:\t%s\n", formatSize(c.ChunkSize))
	fmt.Fprintf(w, "Raw capacity:\t%s (online chunkservers)\n", formatSize(c.RawCapacityBytes))
	fmt.Fprintf(w, "Raw free:\t%s\n", formatSize(c.RawFreeBytes))
	alloc := formatSize(c.AllocatedBytes)
	if c.ChunkSize > 0 {
		alloc += fmt.Sprintf(" (%d chunks)", c.AllocatedBytes/c.ChunkSize)
	}
	if c.RawCapacityBytes > 0 {
		alloc += fmt.Sprintf(", %.1f %% of the raw capacity", 100*float64(c.AllocatedBytes)/float64(c.RawCapacityBytes))
	}
	fmt.Fprintf(w, "Allocated:\t%s\n", alloc)
	fmt.Fprintf(w, "Timeouts:\tt_io %v, offline after %v, LOG period T %v\n", ms(c.IOTimeoutMS), ms(c.OfflineAfterMS), ms(c.LogPeriodMS))
	fmt.Fprintf(w, "Generation:\t%d\n", c.Generation)
	fmt.Fprintf(w, "Schema version:\t%d\n", c.SchemaVersion)
	fmt.Fprintf(w, "Created:\t%s\n", c.CreatedAt.Format(time.RFC3339))
}
