package cli

import (
	"fmt"
	"strings"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// progressWidth is the number of cells of a resync progress bar.
const progressWidth = 12

// progressBar draws done of total as "[#######.....] 61% 39 MiB/64 MiB".
// The bar and the percentage round to the nearest, but show full only when
// done: 99% is the most an unfinished resync shows.
func progressBar(done, total int64) string {
	if total <= 0 {
		return "[" + strings.Repeat(".", progressWidth) + "] 0% 0 B/0 B"
	}
	done = min(max(done, 0), total)
	// Scale in float64: done*progressWidth overflows int64 for huge totals.
	frac := float64(done) / float64(total)
	cells := min(int(frac*progressWidth+0.5), progressWidth)
	pct := min(int(frac*100+0.5), 100)
	if done < total {
		pct = min(pct, 99)
		cells = min(cells, progressWidth-1)
	}
	return fmt.Sprintf("[%s%s] %d%% %s/%s", strings.Repeat("#", cells), strings.Repeat(".", progressWidth-cells),
		pct, formatSize(done), formatSize(total))
}

// memberState describes a member's state for a table: the state, with the
// progress bar while it resyncs and the error while it is degraded.
func memberState(m api.Member) string {
	s := orDash(m.State)
	switch m.State {
	case api.MemberResyncing:
		s += " " + progressBar(m.ResyncDoneBytes, m.ResyncTotalBytes)
	case api.MemberDegraded:
		if m.Error != "" {
			s += ": " + oneLine(m.Error)
		}
	}
	if m.ChunkFailed != "" {
		s += " (chunk failed on its chunkserver: " + oneLine(m.ChunkFailed) + ")"
	}
	return s
}

// volumeHealth sums up the member states of a volume: "healthy", or how
// many members are degraded and resyncing.
// Set states for volume show's summary, from the worst member state.
const (
	setHealthy   = "healthy"
	setResyncing = "resyncing"
	setDegraded  = "degraded"
)

// setState is a set's state: degraded if a member is, else resyncing if a
// member is or the set reconciles its members, else healthy.
func setState(s api.Set) string {
	st := setHealthy
	if s.Reconciling {
		st = setResyncing
	}
	for _, m := range s.Members {
		switch m.State {
		case api.MemberDegraded:
			return setDegraded
		case api.MemberResyncing:
			st = setResyncing
		}
	}
	return st
}

// setSummary counts sets by state: "320: 317 healthy, 2 degraded, 1 resyncing".
func setSummary(sets []api.Set) string {
	n := map[string]int{}
	for _, s := range sets {
		n[setState(s)]++
	}
	parts := []string{fmt.Sprintf("%d healthy", n[setHealthy])}
	for _, st := range []string{setDegraded, setResyncing} {
		if n[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[st], st))
		}
	}
	return fmt.Sprintf("%d: %s", len(sets), strings.Join(parts, ", "))
}

func volumeHealth(v *api.Volume) string {
	var degraded, resyncing int
	for _, s := range v.Sets {
		for _, m := range s.Members {
			switch m.State {
			case api.MemberDegraded:
				degraded++
			case api.MemberResyncing:
				resyncing++
			}
		}
	}
	var parts []string
	if degraded > 0 {
		parts = append(parts, fmt.Sprintf("%d degraded", degraded))
	}
	if resyncing > 0 {
		parts = append(parts, fmt.Sprintf("%d resyncing", resyncing))
	}
	if len(parts) == 0 {
		return "healthy"
	}
	return strings.Join(parts, ", ")
}

// oneLine makes text from the network safe for one table cell: control
// characters (newlines, tabs, escapes) become spaces.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
}
