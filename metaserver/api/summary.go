package api

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// EventGroup is events of one cause: events of one kind about one server
// (its members degraded, resynced, replaced...) each within GroupGap of
// the previous one. An event that is about no server, or of a kind about
// servers themselves, is a group of its own.
type EventGroup struct {
	Kind, Server    string
	First, Last     time.Time
	FirstID, LastID int64
	Volumes         map[string]int // events by volume
	Bytes           int64          // what the group's resyncs or rebuilds copied
	Events          []Event
}

// GroupGap is how far apart two events of one cause may be.
const GroupGap = time.Minute

// groupKinds are the kinds whose events of one server are summarised.
var groupKinds = map[string]string{
	EventMemberDegraded: "members degraded",
	EventResyncStarted:  "members resyncing",
	EventResyncDone:     "members resynced",
	EventMemberInSync:   "members in sync again without a resync",
	EventRebuildDone:    "members rebuilt",
	EventMemberReplaced: "members replaced by new chunks, being rebuilt",
	EventReplaceBlocked: "members that no chunkserver can take yet",
	EventChunkFailed:    "chunks failed",
	EventVolumeAttached: "volumes attached",
	EventHostFailover:   "volumes failed over to this host",
	EventMemberMoving:   "members moving off, being rebuilt elsewhere",
	EventMemberMoved:    "members moved off",
}

// GroupEvents groups events (oldest first, as listed) by cause, in the
// order of each group's first event.
func GroupEvents(evs []Event) []EventGroup {
	var out []EventGroup
	open := map[[2]string]int{} // (kind, server) → index in out of the group still open
	for _, e := range evs {
		key := [2]string{e.Kind, e.Server}
		_, groups := groupKinds[e.Kind]
		if i, ok := open[key]; ok && groups && e.Server != "" && e.Time.Sub(out[i].Last) <= GroupGap {
			g := &out[i]
			g.Last, g.LastID = e.Time, e.ID
			g.Events = append(g.Events, e)
			g.Bytes += e.Bytes
			if e.Volume != "" {
				g.Volumes[e.Volume]++
			}
			continue
		}
		g := EventGroup{Kind: e.Kind, Server: e.Server, First: e.Time, Last: e.Time, FirstID: e.ID, LastID: e.ID,
			Volumes: map[string]int{}, Bytes: e.Bytes, Events: []Event{e}}
		if e.Volume != "" {
			g.Volumes[e.Volume]++
		}
		out = append(out, g)
		if groups && e.Server != "" {
			open[key] = len(out) - 1
		}
	}
	return out
}

// Summary is the group's message: the event's own for a single event,
// else what happened to how many, where, with the bytes copied and the
// time it took, e.g. "cs3: 213 members degraded (volume demo: 213)".
func (g EventGroup) Summary() string {
	if len(g.Events) == 1 {
		return g.Events[0].Message
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d %s", g.Server, len(g.Events), groupKinds[g.Kind])
	if g.Bytes > 0 {
		fmt.Fprintf(&b, ", %s copied", sizeText(g.Bytes))
	}
	if d := g.Last.Sub(g.First).Round(time.Second); d > 0 {
		fmt.Fprintf(&b, " in %v", d)
	}
	if len(g.Volumes) > 0 {
		names := make([]string, 0, len(g.Volumes))
		for v := range g.Volumes {
			names = append(names, v)
		}
		sort.Slice(names, func(i, j int) bool {
			if g.Volumes[names[i]] != g.Volumes[names[j]] {
				return g.Volumes[names[i]] > g.Volumes[names[j]]
			}
			return names[i] < names[j]
		})
		var parts []string
		for i, v := range names {
			if i == 3 {
				parts = append(parts, fmt.Sprintf("%d more volumes", len(names)-3))
				break
			}
			parts = append(parts, fmt.Sprintf("volume %s: %d", v, g.Volumes[v]))
		}
		fmt.Fprintf(&b, " (%s)", strings.Join(parts, ", "))
	}
	return b.String()
}

// sizeText is a byte count with a binary unit.
func sizeText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
