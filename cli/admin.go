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

func newVolumeCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Short: "Create, list, show and delete volumes"}
	cmd.AddCommand(newVolumeCreateCmd(o), newVolumeListCmd(o), newVolumeShowCmd(o), newVolumeDeleteCmd(o), newVolumeAttachCmd(o), newVolumeResizeCmd(o), newVolumeStatsCmd(o), newVolumeVerifyCmd(o),
		newVolumeCHAPCmd(o), newVolumeAllowCmd(o), newVolumeDisallowCmd(o), newVolumeQoSCmd(o), newVolumeDetachCmd(o), newVolumeRollbackCmd(o),
		newVolumeCloneCmd(o), newVolumeFlattenCmd(o))
	return cmd
}

type volumeCreateOptions struct {
	size       string
	layout     string
	stripeUnit string
	bitmap     string
	host       string
	qos        qosFlags
}

func newVolumeCreateCmd(o *rootOptions) *cobra.Command {
	var vo volumeCreateOptions
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE [--layout mirror:2|mirror:3|ec:K+M] [--stripe-unit 64KiB] [--bitmap remb|internal|none] [--host HOST]",
		Short: "Create a volume (thin: no space is used until written)",
		Long: `Create a volume of mirrored or erasure-coded sets of chunks.

mirror:2 and mirror:3 keep 2 or 3 copies of every byte. ec:K+M (K >= 2, M >= 1,
K+M <= 20) stripes the data over K chunks and adds M parity chunks per set: it
survives M failed members and stores K/(K+M) of its raw space as data (66.7 %
for ec:4+2, against 50 % for mirror:2). Every member of a set is on a
chunkserver of its own fault domain, so ec:4+2 needs 6 of them online.
--stripe-unit sets the bytes of one stripe on one member for ec layouts.
--iops, --bps and their read and write forms limit the volume's I/O (see
volume qos).`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if vo.size == "" {
				return errors.New("--size is required, e.g. --size 20GiB")
			}
			size, err := parseSize(vo.size)
			if err != nil {
				return err
			}
			var unit int64
			if vo.stripeUnit != "" {
				if unit, err = parseSize(vo.stripeUnit); err != nil {
					return fmt.Errorf("--stripe-unit: %w", err)
				}
				if unit == 0 {
					return errors.New("--stripe-unit must be a power of two from 4KiB to 1MiB, e.g. 64KiB")
				}
				if !strings.HasPrefix(vo.layout, api.LayoutEC+":") {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: --stripe-unit is ignored for layout %s: only ec layouts are striped\n", vo.layout)
				}
			}
			q, err := vo.qos.build()
			if err != nil {
				return err
			}
			v, err := o.client().CreateVolume(cmd.Context(), api.CreateVolumeRequest{
				Name: args[0], SizeBytes: size, Layout: vo.layout, StripeUnit: unit, Bitmap: vo.bitmap, Host: vo.host, QoS: q,
			})
			if err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) { printVolume(w, v, false) })
		},
	}
	cmd.Flags().StringVar(&vo.size, "size", "", "size, a multiple of 4KiB, e.g. 20GiB (required)")
	cmd.Flags().StringVar(&vo.layout, "layout", "mirror:2", "layout: mirror:2, mirror:3 or ec:K+M such as ec:4+2")
	cmd.Flags().StringVar(&vo.stripeUnit, "stripe-unit", "", "ec layouts: bytes of one stripe on one member, a power of two from 4KiB to 1MiB (default 64KiB)")
	cmd.Flags().StringVar(&vo.bitmap, "bitmap", api.BitmapRemb,
		"resync bitmap: remb (host bitmap in RAM, LOG bitmaps on the chunkservers), internal (a synchronous bitmap write before each write) or none (full resync)")
	cmd.Flags().StringVar(&vo.host, "host", "", "attach the volume to this host at once")
	vo.qos.register(cmd.Flags())
	return cmd
}

func newVolumeListCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List volumes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			vs, err := o.client().ListVolumes(cmd.Context())
			if err != nil {
				return err
			}
			return o.print(vs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "NAME\tSIZE\tLAYOUT\tRAW\tEFFICIENCY\tBITMAP\tSETS\tHOST\tEPOCH\tHEALTH\tIQN")
				for _, v := range vs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", v.Name, formatSize(v.SizeBytes), v.Layout,
						formatSize(v.RawBytes), efficiency(v.SizeBytes, v.RawBytes), v.Bitmap, len(v.Sets),
						orDash(v.Host), v.Epoch, volumeHealth(&v), v.IQN)
				}
			})
		},
	}
}

func newVolumeShowCmd(o *rootOptions) *cobra.Command {
	var allSets bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a volume with its sets and members",
		Long: `Show a volume with its sets and members. A volume of more than a few
sets is summarised: counts of sets by state, and only the sets that are not
healthy; --sets lists every set.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := o.client().GetVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) { printVolume(w, v, allSets) })
		},
	}
	cmd.Flags().BoolVar(&allSets, "sets", false, "list every set, not only the ones that are not healthy")
	return cmd
}

// summarizeAbove is the number of sets above which volume show lists only
// the sets that are not healthy (unless --sets).
const summarizeAbove = 8

// printVolume prints a volume with one line per member: the set's dirty
// bytes on its first member's line, each member's state, since when, and
// resync progress or the error that degraded it. Unless allSets, a volume of
// many sets shows counts by set state and only the sets not healthy.
func printVolume(w *tabwriter.Writer, v *api.Volume, allSets bool) {
	fmt.Fprintf(w, "Name:\t%s\n", v.Name)
	fmt.Fprintf(w, "Size:\t%s (%d bytes)\n", formatSize(v.SizeBytes), v.SizeBytes)
	fmt.Fprintf(w, "Layout:\t%s\n", describeLayout(v))
	if v.CloneOf != "" {
		fmt.Fprintf(w, "Clone of:\t%s (shares the blocks it has not written)\n", v.CloneOf)
	}
	fmt.Fprintf(w, "Raw:\t%s (%d bytes in %d chunks)\n", formatSize(v.RawBytes), v.RawBytes, chunkCount(v))
	fmt.Fprintf(w, "Efficiency:\t%s\n", describeEfficiency(v))
	fmt.Fprintf(w, "Bitmap:\t%s\n", orDash(v.Bitmap))
	fmt.Fprintf(w, "Host:\t%s\n", orDash(v.Host))
	fmt.Fprintf(w, "Epoch:\t%d\n", v.Epoch)
	if v.Host != "" {
		detach := "no"
		if v.CleanDetach {
			detach = "yes: every write is on every member"
		}
		fmt.Fprintf(w, "Clean detach:\t%s\n", detach)
	}
	fmt.Fprintf(w, "Health:\t%s\n", volumeHealth(v))
	fmt.Fprintf(w, "IQN:\t%s\n", v.IQN)
	printAuth(w, v.Auth)
	printQoS(w, v.QoS)
	if len(v.Snapshots) > 0 {
		names := make([]string, len(v.Snapshots))
		for i, sn := range v.Snapshots {
			names[i] = sn.Name
			if sn.State != api.SnapshotReady {
				names[i] += " (" + sn.State + ")"
			}
		}
		fmt.Fprintf(w, "Snapshots:\t%s\n", strings.Join(names, ", "))
	}
	fmt.Fprintf(w, "Created:\t%s\n", v.CreatedAt.Format(time.RFC3339))
	sets := v.Sets
	if !allSets && len(sets) > summarizeAbove {
		fmt.Fprintf(w, "Sets:\t%s\n", setSummary(v.Sets))
		sets = nil
		for _, s := range v.Sets {
			if setState(s) != setHealthy {
				sets = append(sets, s)
			}
		}
		if len(sets) == 0 {
			fmt.Fprintf(w, "\nEvery set is healthy (--sets lists all %d).\n", len(v.Sets))
			return
		}
		fmt.Fprintf(w, "\nThe %d sets that are not healthy (--sets lists all %d):\n", len(sets), len(v.Sets))
	} else {
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "SET\tDIRTY\tMEMBER\tCHUNKSERVER\tCHUNK\tSINCE\tSTATE")
	for _, s := range sets {
		dirty := formatSize(s.DirtyBytes)
		if s.Reconciling {
			dirty += " resyncing " + progressBar(s.ReconcileDoneBytes, s.ReconcileTotalBytes)
		}
		if len(s.Members) == 0 {
			fmt.Fprintf(w, "%d\t%s\t-\t-\t-\t-\tno members\n", s.Index, dirty)
		}
		for j, m := range s.Members {
			set := ""
			if j == 0 {
				set = fmt.Sprintf("%d\t%s", s.Index, dirty)
			} else {
				set = "\t"
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", set, j, m.Chunkserver, m.ChunkID, ago(m.StateSince), memberState(m))
		}
	}
}

func newVolumeDeleteCmd(o *rootOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a volume and free its chunks",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.client().DeleteVolume(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "volume %s deleted\n", args[0])
			return nil
		},
	}
}

func newVolumeAttachCmd(o *rootOptions) *cobra.Command {
	var host string
	cmd := &cobra.Command{
		Use:   "attach NAME --host HOST",
		Short: "Assign a volume to a host, which then serves it over iSCSI",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if host == "" {
				return errors.New("--host is required")
			}
			v, err := o.client().AttachVolume(cmd.Context(), args[0], host)
			if err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "volume %s attached to host %s at epoch %d\n\n", v.Name, v.Host, v.Epoch)
				printVolume(w, v, false)
			})
		},
	}
	cmd.Flags().StringVar(&host, "host", "", "host name (see chunkraid host list)")
	return cmd
}

func newVolumeResizeCmd(o *rootOptions) *cobra.Command {
	var size string
	cmd := &cobra.Command{
		Use:   "resize NAME --size SIZE",
		Short: "Grow a volume online (a volume never shrinks)",
		Long: "Grow a volume to SIZE (4096, 64MiB, 20GiB, 2T): the last set takes what fits in its chunks and new sets,\n" +
			"placed as for a new volume, take the rest. Initiators see the new capacity as a unit attention\n" +
			"(CAPACITY DATA HAS CHANGED) and read it again. A smaller size is refused.",
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size == "" {
				return errors.New("--size is required, e.g. --size 20GiB")
			}
			n, err := parseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			v, err := o.client().ResizeVolume(cmd.Context(), args[0], n)
			if err != nil {
				return err
			}
			return o.print(v, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "volume %s is now %s in %d sets\n\n", v.Name, formatSize(v.SizeBytes), len(v.Sets))
				printVolume(w, v, false)
			})
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "the new size: 4096, 64MiB, 20GiB, 2T (not below the current one)")
	return cmd
}

func newServerCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "server", Short: "Chunkservers and their disks"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List chunkservers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ss, err := o.client().ListChunkservers(cmd.Context())
			if err != nil {
				return err
			}
			return o.print(ss, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tNAME\tADDR\tCONTROL\tFAULT DOMAIN\tSTATE\tMEMBERS\tCHUNKS\tFREE\tCAPACITY\tLAST HEARTBEAT")
				for _, s := range ss {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", s.ID, s.Name, s.Addr, orDash(s.ControlAddr), s.FaultDomain, serverState(s), s.Members, s.Chunks,
						formatSize(s.FreeBytes), formatSize(s.CapacityBytes), ago(s.LastHeartbeat))
				}
			})
		},
	}, newDrainCmd(o), &cobra.Command{
		Use:   "remove NAME",
		Short: "Forget a chunkserver that is stopped and holds no set member",
		Long: `Forget a chunkserver for good: its disks, its credential and the chunks it
was to delete. It must be offline (stopped) and hold no set member: the
members of a chunkserver offline for replace_after are replaced by new
chunks elsewhere by themselves.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.client().RemoveChunkserver(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(o.out, "chunkserver %s removed\n", args[0])
			return nil
		},
	}, &cobra.Command{
		Use:   "disks",
		Short: "List the chunkservers' disks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ds, err := o.client().ListDisks(cmd.Context())
			if err != nil {
				return err
			}
			return o.print(ds, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tCHUNKSERVER\tPATH\tFREE\tCAPACITY\tCHUNKS\tFAILED")
				for _, d := range ds {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%d\t%d\n", d.ID, d.Chunkserver, d.Path, formatSize(d.FreeBytes),
						formatSize(d.CapacityBytes), d.Chunks, d.FailedChunks)
				}
			})
		},
	})
	return cmd
}

func newHostCmd(o *rootOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "Hosts that serve volumes"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List hosts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			hs, err := o.client().ListHosts(cmd.Context())
			if err != nil {
				return err
			}
			return o.print(hs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tNAME\tISCSI\tSTATE\tLAST HEARTBEAT")
				for _, h := range hs {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", h.ID, h.Name, h.ISCSIAddr, h.State, ago(h.LastHeartbeat))
				}
			})
		},
	})
	return cmd
}

func newChunkCmd(o *rootOptions) *cobra.Command {
	var volume string
	list := &cobra.Command{
		Use:   "list [--volume NAME]",
		Short: "List chunks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cs, err := o.client().ListChunks(cmd.Context(), volume)
			if err != nil {
				return err
			}
			return o.print(cs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "CHUNK\tCHUNKSERVER\tVOLUME\tSET\tMEMBER\tSIZE\tSTATE\tFAILED")
				for _, c := range cs {
					fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", c.ID, c.Chunkserver, orDash(c.Volume), c.SetIndex, c.MemberIndex, formatSize(c.SizeBytes), c.State,
						orDash(oneLine(c.Failed)))
				}
			})
		},
	}
	list.Flags().StringVar(&volume, "volume", "", "only the chunks of this volume")
	cmd := &cobra.Command{Use: "chunk", Short: "Chunks on chunkservers"}
	cmd.AddCommand(list)
	return cmd
}

func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %s (got %d arguments): see %s --help", cmd.CommandPath(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

// serverState is a chunkserver's state for a table: online or offline, and
// full when its disks are.
func serverState(s api.Chunkserver) string {
	st := s.State
	if s.Full {
		st += ", full"
	}
	if s.Draining {
		if s.Members > 0 {
			st += fmt.Sprintf(", draining (%d members left)", s.Members)
		} else {
			st += ", drained"
		}
	}
	return st
}

func newDrainCmd(o *rootOptions) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "drain NAME [--wait]",
		Short: "Move every set member off a chunkserver, online, before taking it away",
		Long: `Move every set member off a chunkserver while its volumes stay in use: each
member gets a successor on another chunkserver, rebuilt by the volume's
host beside it, which takes its place once in sync, so no set ever has
fewer copies than it should (an erasure-coded member's successor gets
that member's writes and a copy of its units). The chunkserver takes no
new chunks. With --wait the command
prints progress until the chunkserver holds no member; then stop it and
run chunkraid server remove NAME.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl := o.client()
			d, err := cl.DrainChunkserver(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(o.out, "chunkserver %s draining: %d set members to move (volumes: %s)\n", d.Chunkserver, d.Members, orDash(strings.Join(d.Volumes, ", ")))
			if !wait {
				return nil
			}
			start, last := time.Now(), -1
			for {
				ss, err := cl.ListChunkservers(cmd.Context())
				if err != nil {
					return err
				}
				left := -1
				for _, s := range ss {
					if s.Name == d.Chunkserver {
						left = s.Members
					}
				}
				if left != last {
					fmt.Fprintf(o.out, "%s  %d of %d members moved\n", time.Since(start).Round(time.Second), d.Members-left, d.Members)
					last = left
				}
				if left == 0 {
					fmt.Fprintf(o.out, "chunkserver %s is drained: stop it, then chunkraid server remove %s\n", d.Chunkserver, d.Chunkserver)
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(time.Second):
				}
			}
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "print progress until every member moved")
	return cmd
}
