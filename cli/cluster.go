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
and free space of the online chunkservers' disks; what the chunks are
provisioned (chunks × chunk size: chunks are thin, so that is what they may
grow to); what they take on disk (allocated); and the raw size new volumes
may still take under the metaserver's --overcommit (free × overcommit, less
what is provisioned but not yet allocated).`,
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
	prov := formatSize(c.ProvisionedBytes)
	if c.ChunkSize > 0 {
		prov += fmt.Sprintf(" (%d chunks)", c.ProvisionedBytes/c.ChunkSize)
	}
	if c.RawCapacityBytes > 0 {
		prov += fmt.Sprintf(", %.1f %% of the raw capacity", 100*float64(c.ProvisionedBytes)/float64(c.RawCapacityBytes))
	}
	fmt.Fprintf(w, "Provisioned:\t%s\n", prov)
	alloc := formatSize(c.AllocatedBytes)
	if c.ProvisionedBytes > 0 {
		alloc += fmt.Sprintf(" (%.1f %% of the provisioned)", 100*float64(c.AllocatedBytes)/float64(c.ProvisionedBytes))
	}
	fmt.Fprintf(w, "Allocated:\t%s\n", alloc)
	fmt.Fprintf(w, "Provisionable:\t%s (raw, for new volumes, overcommit %g)\n", formatSize(c.ProvisionableBytes), c.Overcommit)
	fmt.Fprintf(w, "Timeouts:\tt_io %v, offline after %v, LOG period T %v\n", ms(c.IOTimeoutMS), ms(c.OfflineAfterMS), ms(c.LogPeriodMS))
	fmt.Fprintf(w, "Generation:\t%d\n", c.Generation)
	fmt.Fprintf(w, "Schema version:\t%d\n", c.SchemaVersion)
	fmt.Fprintf(w, "Created:\t%s\n", c.CreatedAt.Format(time.RFC3339))
}
