package cli

import (
	"fmt"
	"strings"
	"time"

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
	return memberStateAt(m, time.Now())
}

// memberStateAt is memberState at time now: a resync or rebuild shows its
// rate since it started and the time it still needs at that rate.
func memberStateAt(m api.Member, now time.Time) string {
	s := orDash(m.State)
	switch m.State {
	case api.MemberResyncing, api.MemberRebuilding:
		s += " " + progressBar(m.ResyncDoneBytes, m.ResyncTotalBytes)
		if el := now.Sub(m.StateSince); !m.StateSince.IsZero() && m.ResyncDoneBytes > 0 && el > time.Second && m.ResyncTotalBytes > m.ResyncDoneBytes {
			rate := float64(m.ResyncDoneBytes) / el.Seconds()
			eta := time.Duration(float64(m.ResyncTotalBytes-m.ResyncDoneBytes) / rate * float64(time.Second))
			s += fmt.Sprintf(" %s/s, ETA %v", formatSize(int64(rate)), eta.Round(time.Second))
		}
		if m.State == api.MemberRebuilding && m.Error != "" {
			s += " (" + oneLine(m.Error) + ")"
		}
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
	setHealthy    = "healthy"
	setResyncing  = "resyncing"
	setRebuilding = "rebuilding"
	setDegraded   = "degraded"
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
		case api.MemberRebuilding:
			st = setRebuilding
		case api.MemberResyncing:
			if st != setRebuilding {
				st = setResyncing
			}
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
	for _, st := range []string{setDegraded, setRebuilding, setResyncing} {
		if n[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[st], st))
		}
	}
	return fmt.Sprintf("%d: %s", len(sets), strings.Join(parts, ", "))
}

func volumeHealth(v *api.Volume) string {
	var degraded, rebuilding, resyncing int
	for _, s := range v.Sets {
		for _, m := range s.Members {
			switch m.State {
			case api.MemberDegraded:
				degraded++
			case api.MemberRebuilding:
				rebuilding++
			case api.MemberResyncing:
				resyncing++
			}
		}
	}
	var parts []string
	if degraded > 0 {
		parts = append(parts, fmt.Sprintf("%d degraded", degraded))
	}
	if rebuilding > 0 {
		parts = append(parts, fmt.Sprintf("%d rebuilding", rebuilding))
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
