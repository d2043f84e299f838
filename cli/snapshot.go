package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

func newSnapshotCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Take, list and delete crash-consistent snapshots of volumes",
		Long: `A snapshot of a volume is the volume as it was at one instant: its host holds
the volume's commands, flushes every set, has every member chunk record the
snapshot, and lets the commands go on. The chunks keep what the volume changes
after it (copy-on-write in 64 KiB blocks). Snapshots are of attached mirror
volumes.`,
	}
	cmd.AddCommand(newSnapshotCreateCmd(o), newSnapshotListCmd(o), newSnapshotDeleteCmd(o))
	return cmd
}

func newSnapshotCreateCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "create VOLUME NAME",
		Short: "Take a snapshot of a volume (it returns once the volume's host took it)",
		Args:  exactArgs(2, "VOLUME NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			sn, err := o.client().CreateSnapshot(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return o.print(sn, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Snapshot %s of volume %s taken; the volume's commands were held %s.\n",
					sn.Name, sn.Volume, time.Duration(sn.PauseMicros)*time.Microsecond)
			})
		},
	}
}

func newSnapshotListCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list VOLUME",
		Short: "List a volume's snapshots, oldest first",
		Args:  exactArgs(1, "VOLUME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			snaps, err := o.client().ListSnapshots(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return o.print(snaps, func(w *tabwriter.Writer) { printSnapshots(w, snaps) })
		},
	}
}

func printSnapshots(w *tabwriter.Writer, snaps []api.Snapshot) {
	if len(snaps) == 0 {
		fmt.Fprintln(w, "No snapshots.")
		return
	}
	fmt.Fprintln(w, "NAME\tSTATE\tTAKEN\tPAUSE")
	for _, sn := range snaps {
		pause := "-"
		if sn.State == api.SnapshotReady {
			pause = (time.Duration(sn.PauseMicros) * time.Microsecond).String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", sn.Name, sn.State, ago(sn.CreatedAt), pause)
	}
}

func newSnapshotDeleteCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete VOLUME NAME",
		Short: "Delete a snapshot (it returns once the volume's host deleted it from every chunk)",
		Args:  exactArgs(2, "VOLUME NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.client().DeleteSnapshot(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "Snapshot %s of volume %s deleted.\n", args[1], args[0])
			return nil
		},
	}
}

func newVolumeDetachCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "detach NAME",
		Short: "Detach a volume from its host: no host serves it until it is attached again",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.client().DetachVolume(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "Volume %s detached; chunkraid volume attach %s --host HOST serves it again.\n", args[0], args[0])
			return nil
		},
	}
}

func newVolumeRollbackCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "rollback NAME SNAPSHOT",
		Short: "Make a detached volume hold one of its snapshots again",
		Long: `Make a detached volume hold one of its snapshots again: every member chunk
writes back the blocks changed since the snapshot. The snapshot and the other
snapshots stay. The volume must be detached (chunkraid volume detach), so that
nothing writes it meanwhile.`,
		Args: exactArgs(2, "NAME SNAPSHOT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.client().RollbackVolume(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "Volume %s rolled back to snapshot %s.\n", args[0], args[1])
			return nil
		},
	}
}
