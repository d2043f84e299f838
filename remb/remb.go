// Package remb is the host half of REMB recovery as a plan: given what a
// host knows of a set's members when it attaches a volume (which are
// reachable, which the previous holder recorded as not in sync) and of the
// volume (bitmap mode, clean detach, epoch, a write-intent bitmap left by a
// previous hostd), PlanAttach says which members serve, whose LOG bitmaps
// fold into the WIB now or when they return, whether everything must be
// resynced, and what to pin and record before serving; PlanRejoin says what
// a failed member needs when it comes back. It does no I/O and depends only
// on the standard library: hostd executes the plans, and the scenario files
// in testdata and the recovery models in package raid drive the same
// functions (DESIGN §2 rules 2 and 3).
package remb

import (
	"errors"
	"fmt"
	"slices"
)

// Mode is a volume's bitmap mode (api.Bitmap*).
type Mode string

// The bitmap modes.
const (
	ModeRemb     Mode = "remb"     // LOG bitmaps on the chunkservers
	ModeInternal Mode = "internal" // an intent bitmap stored on every member before a write
	ModeNone     Mode = "none"     // no record: a full resync after any doubt
)

// Member is what the host knows of one member when it attaches.
type Member struct {
	// Reachable: fenced and connected.
	Reachable bool
	// Missed: the previous holder recorded it as not in sync (degraded or
	// resyncing): it missed acknowledged writes.
	Missed bool
	// Rebuild: a new chunk that replaces a lost member (recorded
	// rebuilding): it holds none of the set's data that it has not been
	// given by a rebuild, so only a rebuild may make it a copy.
	Rebuild bool
}

// AttachInput is what PlanAttach decides from.
type AttachInput struct {
	Members []Member
	// Need is how many members in sync the set needs to serve: 1 for a
	// mirror, K for ec:K+M.
	Need int
	Mode Mode
	// Clean: the previous holder detached cleanly at this epoch (every
	// write on every member): nothing to recover.
	Clean bool
	// Epoch is the volume's epoch; 1 is its first attach.
	Epoch int64
	// WIBReused: the set's write-intent bitmap left by a previous hostd of
	// this host at this epoch was found and is used.
	WIBReused bool
	// FullResync: the previous holder recorded that a region may differ
	// between the members that no pinned LOG records (its pins failed).
	FullResync bool
}

// AttachPlan is how a host attaches a set.
type AttachPlan struct {
	// Degraded start Failed: the unreachable members and the reachable
	// ones that missed writes.
	Degraded []int
	// Stale are the reachable members that missed writes: never read nor
	// a resync source until resynced.
	Stale []int
	// Missed are all members recorded as having missed writes, reachable
	// or not (raid.ECConfig.Stale): the other degraded members were merely
	// unreachable and hold every acknowledged write.
	Missed []int
	// Rebuild are the members being rebuilt onto new chunks. They start
	// degraded, reachable or not, count as Missed, are never read, merged
	// nor a source, and rejoin through a rebuild (PlanRejoin).
	Rebuild []int
	// Usable counts the reachable members that missed nothing.
	Usable int
	// MergeNow are the members whose LOG (or intent) bitmap is ORed into the
	// WIB before the set is built: after an unclean stop it names every
	// region the previous holder may have left different between members.
	MergeNow []int
	// MergeOnReturn are the members whose bitmap is merged when they come
	// back (unreachable now, after an unclean stop).
	MergeOnReturn []int
	// MarkAll: there is no record of what may differ, so everything may
	// (bitmap mode none after an unclean stop, without the WIB of a
	// previous hostd; or the previous holder said its LOG record is not
	// complete: FullResync). A bitmap that cannot be read at MergeNow means
	// the same.
	MarkAll bool
	// StartPinned: the members' LOGs may be pinned when the set starts (by
	// the chunkservers after an unclean stop, or by PinSurvivors).
	StartPinned bool
	// PinSurvivors: attaching degraded, the survivors' LOGs are pinned
	// before serving, so they do not forget what the absent members miss.
	PinSurvivors bool
	// RecordBeforeServing: the members' states are recorded with the
	// metaserver before the target serves (always: it clears a clean
	// detach held for this epoch and records the degraded members).
	RecordBeforeServing bool
}

// ErrTooFew is returned when too few members that missed nothing are
// reachable for the set to serve.
var ErrTooFew = errors.New("too few in-sync members reachable")

// PlanAttach plans the attach of one set.
func PlanAttach(in AttachInput) (AttachPlan, error) {
	p := AttachPlan{RecordBeforeServing: true}
	recover := !in.Clean
	for i, m := range in.Members {
		if m.Missed || m.Rebuild {
			p.Missed = append(p.Missed, i)
		}
		switch {
		case m.Rebuild:
			p.Degraded = append(p.Degraded, i)
			p.Rebuild = append(p.Rebuild, i)
		case !m.Reachable:
			p.Degraded = append(p.Degraded, i)
			if recover && in.Mode != ModeNone {
				p.MergeOnReturn = append(p.MergeOnReturn, i)
			}
		case m.Missed:
			p.Degraded = append(p.Degraded, i)
			p.Stale = append(p.Stale, i)
			if recover && in.Mode != ModeNone {
				p.MergeNow = append(p.MergeNow, i)
			}
		default:
			p.Usable++
			if recover && in.Mode != ModeNone {
				p.MergeNow = append(p.MergeNow, i)
			}
		}
	}
	slices.Sort(p.Degraded)
	need := max(in.Need, 1)
	if p.Usable < need {
		if p.Usable == 0 {
			return p, fmt.Errorf("%w: no in-sync member of %d reachable", ErrTooFew, len(in.Members))
		}
		return p, fmt.Errorf("%w: %d of %d members, the set needs %d", ErrTooFew, p.Usable, len(in.Members), need)
	}
	p.MarkAll = recover && (in.FullResync || in.Mode == ModeNone && in.Epoch > 1 && !in.WIBReused)
	p.PinSurvivors = len(p.Degraded) > 0
	p.StartPinned = recover || p.PinSurvivors
	return p, nil
}

// RejoinInput is what PlanRejoin decides from.
type RejoinInput struct {
	Mode Mode
	// MergeOnReturn: the member was in the attach plan's MergeOnReturn and
	// its bitmap has not been merged yet.
	MergeOnReturn bool
	// Rebuild: the member was in the attach plan's Rebuild and its rebuild
	// has not completed.
	Rebuild bool
}

// RejoinPlan is what a failed member needs before it is handed back to the
// set (which then resyncs it).
type RejoinPlan struct {
	// Fence: fence the member's chunk at the current epoch first, which
	// drains any request of its dead connection still running on the
	// chunkserver (always).
	Fence bool
	// MergeLog: OR its LOG (or intent) bitmap into the WIB: it may name
	// writes the others never saw. A member that failed while attached
	// needs no merge: the WIB keeps every region not durable on every member
	// dirty, and its failure made them need a resync.
	MergeLog bool
	// MarkAll: no record of what it missed (bitmap mode none): resync
	// everything.
	MarkAll bool
	// MarkAllocated: a rebuild. Every extent that a usable member has
	// allocated is marked to be copied (a hole reads as zeroes on the new
	// chunk too); its LOG means nothing yet.
	MarkAllocated bool
}

// PlanRejoin plans the return of a failed member.
func PlanRejoin(in RejoinInput) RejoinPlan {
	if in.Rebuild {
		return RejoinPlan{Fence: true, MarkAllocated: true}
	}
	return RejoinPlan{Fence: true, MergeLog: in.MergeOnReturn && in.Mode != ModeNone, MarkAll: in.Mode == ModeNone}
}
