package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/chunkraid/chunkraid/chunkserver/nbd"
	"github.com/chunkraid/chunkraid/metaserver/api"
	"github.com/chunkraid/chunkraid/raid"
)

// setVerdict is the result of verifying one set.
type setVerdict struct {
	// Snapshot is the snapshot checked; "" for the live volume.
	Snapshot   string  `json:"snapshot,omitempty"`
	Set        int     `json:"set"`
	Layout     string  `json:"layout"`
	SizeB      int64   `json:"member_bytes"`  // bytes of one member
	CheckedB   int64   `json:"checked_bytes"` // bytes of one member read: what may hold data on some member
	Mismatches []int64 `json:"mismatches"`    // mirror: 1 MiB regions; ec: stripes
	Unit       int64   `json:"unit_bytes"`    // bytes of one mismatch index
	Seconds    float64 `json:"seconds"`
	// Skipped are a drain's successors, not checked (verifySet).
	Skipped []string `json:"skipped_successors,omitempty"`
}

func newVolumeVerifyCmd(o *rootOptions) *cobra.Command {
	var snapshot string
	cmd := &cobra.Command{
		Use:   "verify NAME [--snapshot SNAP]",
		Short: "Read every member of a volume over NBD and check that mirror copies agree and EC parity matches",
		Long: `Read every member chunk of every set of a volume directly from the
chunkservers over NBD and check that the copies of a mirror are identical and
that every stripe of an EC set has parity matching its data. Only what may
hold data is read (NBD base:allocation of every member): a range that is a
hole on every member reads as zeroes on all of them and agrees by definition.
A range that disagrees is read a second time before it is reported, but
writes running meanwhile can still show up: verify a quiet volume for an
exact answer. On a terminal a progress bar shows bytes and rate. Exits
non-zero when anything disagrees. Then every snapshot of the volume is
checked the same way: every member's copy of it. --snapshot checks only that
snapshot.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			v, err := o.client().ReadSnapshotExports(ctx, args[0], snapshot)
			if err != nil {
				return err
			}
			var out []setVerdict
			bad, err := verifyVolume(ctx, o, v, snapshot, &out)
			if err != nil {
				return err
			}
			if snapshot == "" {
				// Then every snapshot: each member's copy of it.
				for _, sn := range v.Snapshots {
					if sn.State != api.SnapshotReady {
						continue
					}
					sv, err := o.client().ReadSnapshotExports(ctx, args[0], sn.Name)
					if err != nil {
						return fmt.Errorf("snapshot %s: %w", sn.Name, err)
					}
					n, err := verifyVolume(ctx, o, sv, sn.Name, &out)
					if err != nil {
						return fmt.Errorf("snapshot %s: %w", sn.Name, err)
					}
					bad += n
				}
			}
			if o.output == "json" {
				if err := o.print(out, nil); err != nil {
					return err
				}
			}
			if bad > 0 {
				return fmt.Errorf("volume %s: %d ranges disagree between members", v.Name, bad)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&snapshot, "snapshot", "", "check this snapshot of the volume")
	return cmd
}

// verifyVolume checks every set of v (snapshot snapshot of it, or the live
// volume for ""), appends the verdicts to out, prints them unless the
// output is JSON, and returns how many ranges disagree.
func verifyVolume(ctx context.Context, o *rootOptions, v *api.Volume, snapshot string, out *[]setVerdict) (int, error) {
	layout, err := api.ParseLayout(v.Layout)
	if err != nil {
		return 0, err
	}
	what := "volume " + v.Name
	if snapshot != "" {
		what += ", snapshot " + snapshot
	}
	bad := 0
	for i, s := range v.Sets {
		var p *progressLine
		if o.output != "json" {
			p = newProgressLine(o.out, fmt.Sprintf("%s: set %d of %d (%s)", what, i+1, len(v.Sets), layout))
		}
		vd, err := verifySet(ctx, v, s, layout, p.update)
		p.clear()
		if err != nil {
			return bad, fmt.Errorf("set %d: %w", s.Index, err)
		}
		vd.Snapshot = snapshot
		bad += len(vd.Mismatches)
		*out = append(*out, vd)
		if o.output != "json" {
			prefix := ""
			if snapshot != "" {
				prefix = "snapshot " + snapshot + " "
			}
			fmt.Fprintf(o.out, "%sset %d (%s): %s of %s may hold data, checked in %.1fs, %d mismatches\n",
				prefix, s.Index, layout, formatSize(vd.CheckedB), formatSize(vd.SizeB), vd.Seconds, len(vd.Mismatches))
			for _, c := range vd.Skipped {
				fmt.Fprintf(o.out, "set %d: chunk %s not checked: a drain's successor, not yet in the member's place\n", s.Index, c)
			}
		}
	}
	if bad == 0 && o.output != "json" {
		fmt.Fprintf(o.out, "%s: every member agrees\n", what)
	}
	return bad, nil
}

// checkedMembers splits a set's members into those verify reads and the
// chunks it skips: a drain's successors, being rebuilt and not a copy yet,
// or in an EC set a second copy of one member, outside the layout.
func checkedMembers(s api.Set, layout api.Layout) (check []api.Member, skipped []string) {
	for _, m := range s.Members {
		if m.Replaces != "" && (m.State != api.MemberInSync || layout.Kind == api.LayoutEC) {
			skipped = append(skipped, m.ChunkID)
			continue
		}
		check = append(check, m)
	}
	return check, skipped
}

func verifySet(ctx context.Context, v *api.Volume, s api.Set, layout api.Layout, progress raid.VerifyProgress) (vd setVerdict, err error) {
	vd = setVerdict{Set: s.Index, Layout: layout.String(), Mismatches: []int64{}}
	start := time.Now()
	defer func() { vd.Seconds = time.Since(start).Seconds() }()
	var members []raid.Device
	check, skipped := checkedMembers(s, layout)
	vd.Skipped = skipped
	for _, m := range check {
		if m.Export == "" {
			return vd, fmt.Errorf("the metaserver issued no export name for member %s", m.ChunkID)
		}
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := nbd.Dial(dctx, nbd.ClientConfig{Addr: m.Addr, Export: m.Export, Timeout: 30 * time.Second,
			MetaContexts: []string{allocationContext}})
		cancel()
		if err != nil {
			return vd, fmt.Errorf("member %s on %s: %w", m.ChunkID, m.Chunkserver, err)
		}
		defer c.Close()
		members = append(members, allocatedMember{c})
		vd.SizeB = c.Size()
	}
	track := func(done, total int64) {
		vd.CheckedB = total
		if progress != nil {
			progress(done, total)
		}
	}
	if layout.Kind == api.LayoutEC {
		vd.Unit = v.StripeUnit
		if vd.Unit == 0 {
			vd.Unit = raid.DefaultStripeUnit
		}
		vd.Mismatches, err = raid.VerifyEC(ctx, members, layout.K, layout.M, vd.Unit, track)
	} else {
		vd.Unit = 1 << 20
		vd.Mismatches, err = raid.VerifyMirror(ctx, members, vd.Unit, track)
	}
	if vd.Mismatches == nil {
		vd.Mismatches = []int64{}
	}
	return vd, err
}

// allocationContext is the NBD meta context of a chunk's allocation.
const allocationContext = "base:allocation"

// allocatedMember is a member read over NBD that tells verification which
// of its ranges may hold data (raid.Allocator), from base:allocation.
type allocatedMember struct{ *nbd.Client }

// Allocated implements raid.Allocator.
func (m allocatedMember) Allocated(ctx context.Context, off, length int64) ([]raid.Range, error) {
	var out []raid.Range
	for end := off + length; off < end; {
		exts, err := m.BlockStatus(ctx, allocationContext, off, end-off)
		if err != nil {
			return nil, err
		}
		if len(exts) == 0 {
			return nil, fmt.Errorf("base:allocation at %d: the server described nothing", off)
		}
		for _, e := range exts {
			if e.Flags&nbd.StateHole == 0 {
				if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == off {
					out[n-1].Len += e.Length
				} else {
					out = append(out, raid.Range{Off: off, Len: e.Length})
				}
			}
			off += e.Length
		}
	}
	return out, nil
}
