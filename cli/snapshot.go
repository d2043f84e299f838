package cli

import (
	"errors"
	"fmt"
	"strings"
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
volumes. A snapshot attached to a host is served there read-only over iSCSI,
for copying it out (qemu-img convert).`,
	}
	cmd.AddCommand(newSnapshotCreateCmd(o), newSnapshotListCmd(o), newSnapshotDeleteCmd(o),
		newSnapshotAttachCmd(o), newSnapshotDetachCmd(o))
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
	fmt.Fprintln(w, "NAME\tSTATE\tSIZE\tTAKEN\tPAUSE\tSERVED BY\tIQN")
	for _, sn := range snaps {
		pause := "-"
		if sn.State == api.SnapshotReady {
			pause = (time.Duration(sn.PauseMicros) * time.Microsecond).String()
		}
		host, iqn := "-", "-"
		if sn.Host != "" {
			host, iqn = sn.Host, sn.IQN
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sn.Name, sn.State, formatSize(sn.SizeBytes), ago(sn.CreatedAt), pause, host, iqn)
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

func newSnapshotAttachCmd(o *rootOptions) *cobra.Command {
	var host string
	cmd := &cobra.Command{
		Use:   "attach VOLUME NAME --host HOST",
		Short: "Serve a snapshot read-only over iSCSI from a host, to copy it out",
		Long: `Serve a snapshot read-only over iSCSI from HOST, under an iSCSI name of its
own (the volume's, then :snap: and the snapshot's name), with the volume's CHAP
and initiator allowlist. Writes are refused (DATA PROTECT). The volume itself
may be attached to any host or to none. Copy the snapshot out with, for example,
  qemu-img convert -p -f raw -O qcow2 iscsi://PORTAL/IQN/0 backup.qcow2
An attached snapshot cannot be deleted: detach it first.`,
		Args: exactArgs(2, "VOLUME NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if host == "" {
				return errors.New("--host is required: the host that serves the snapshot (chunkraid host list shows them)")
			}
			sn, err := o.client().AttachSnapshot(cmd.Context(), args[0], args[1], host)
			if err != nil {
				return err
			}
			portal := "PORTAL"
			if hosts, err := o.client().ListHosts(cmd.Context()); err == nil {
				for _, h := range hosts {
					if h.Name == sn.Host {
						portal = h.ISCSIAddr
					}
				}
			}
			return o.print(sn, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Snapshot %s of volume %s is served read-only by host %s as\n  %s\n", sn.Name, sn.Volume, sn.Host, sn.IQN)
				fmt.Fprintf(w, "Copy it out with:\n  qemu-img convert -p -f raw -O raw iscsi://%s/%s/0 %s-%s.img\n", portal, sn.IQN, sn.Volume, sn.Name)
			})
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "host name (see chunkraid host list)")
	return cmd
}

func newSnapshotDetachCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "detach VOLUME NAME",
		Short: "Stop serving a snapshot over iSCSI",
		Args:  exactArgs(2, "VOLUME NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.client().DetachSnapshot(cmd.Context(), args[0], args[1]); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "Snapshot %s of volume %s is no longer served.\n", args[1], args[0])
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

func newVolumeCloneCmd(o *rootOptions) *cobra.Command {
	var host string
	cmd := &cobra.Command{
		Use:   "clone VOLUME@SNAPSHOT NEWVOLUME [--host HOST]",
		Short: "Make a new volume, at once, a writable clone of a snapshot",
		Long: `Make NEWVOLUME a writable clone of snapshot SNAPSHOT of VOLUME, at once: its
member chunks are made on the chunkservers of VOLUME's and share every block
they have not written with the snapshot. Writes to either volume never show on
the other. The snapshot and VOLUME cannot be deleted while a clone exists.
--host attaches the clone at once.`,
		Args: exactArgs(2, "VOLUME@SNAPSHOT NEWVOLUME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			parent, snap, ok := strings.Cut(args[0], "@")
			if !ok || parent == "" || snap == "" {
				return fmt.Errorf("%q: name the snapshot as VOLUME@SNAPSHOT, e.g. golden@v1 (chunkraid snapshot list VOLUME lists them)", args[0])
			}
			v, err := o.client().CloneVolume(cmd.Context(), parent, snap, args[1], host)
			if err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "volume %s created as a writable clone of %s\n\n", v.Name, v.CloneOf)
				printVolume(w, v, false)
			})
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "attach the clone at once to this host")
	return cmd
}

func newVolumeFlattenCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "flatten NAME",
		Short: "Copy into a clone what it shares with its parent's snapshot, so that it depends on it no more",
		Long: `Copy into every member chunk of clone NAME the blocks it still shares with the
snapshot it was cloned from; the chunkservers do it side by side while the
volume keeps serving. Afterwards NAME is an ordinary volume, and the snapshot
and the parent can be deleted once no other clone reads them. A flatten that
fails part way leaves NAME a clone; run it again.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := o.client().GetVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if v.CloneOf == "" {
				return fmt.Errorf("volume %s is not a clone: there is nothing to flatten", args[0])
			}
			of := v.CloneOf
			if o.output != "json" {
				fmt.Fprintf(o.out, "Flattening %s: copying what it shares with %s (%d chunks)...\n", args[0], of, chunkCount(v))
			}
			start := time.Now()
			if v, err = o.client().FlattenVolume(cmd.Context(), args[0]); err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "Volume %s flattened in %s: it no longer shares blocks with %s.\n", v.Name, time.Since(start).Round(time.Millisecond), of)
			})
		},
	}
}
