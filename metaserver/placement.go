package metaserver

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// This file holds placement: which chunkservers and disks hold the members
// of a new volume's sets. It is a pure function of its inputs; the store
// loads the candidates and writes the result in one transaction.

// candidate is an online chunkserver that may receive chunks.
type candidate struct {
	ID          int64
	Name        string
	FaultDomain string
	Disks       []candidateDisk
}

// candidateDisk is a disk of a candidate with the active chunks it holds.
type candidateDisk struct {
	ID           int64
	FreeBytes    int64
	ActiveChunks int
}

// placed is where one member goes.
type placed struct {
	ChunkserverID int64
	DiskID        int64
}

// PlacementError says why a layout cannot be placed on the online chunkservers.
type PlacementError struct {
	Layout  string // e.g. "mirror:3"
	Need    int    // members per set, each in its own fault domain
	Online  int    // usable online chunkservers
	Domains int    // distinct fault domains among them
}

func (e *PlacementError) Error() string {
	verb := "are"
	if e.Online == 1 {
		verb = "is"
	}
	msg := fmt.Sprintf("%s needs %d chunkservers in distinct fault domains; %d %s online", e.Layout, e.Need, e.Online, verb)
	if e.Domains != e.Online {
		msg += fmt.Sprintf(" in %d fault domains", e.Domains)
	}
	return msg
}

// place chooses the members of sets sets of l.Width() members each, every
// member of a set in a distinct fault domain. Member j of a set is shard j
// of an EC layout; placement treats data and parity shards alike.
//
// Servers are ranked by a score: their free bytes minus chunkSize for every
// active chunk they already hold and every chunk placed by this call. Chunks
// are thin, so a server's free bytes do not yet reflect the chunks it holds;
// counting them keeps allocation spread instead of piling every set on the
// emptiest server. The score only ranks: it never refuses a placement.
//
// For each set, each fault domain offers its best server, and the width
// domains with the best offers receive one member each, best first. Ties
// break by fault domain then server name, so the result is deterministic.
// On each chosen server the member goes to the disk with the best score
// computed the same way per disk.
func place(l api.Layout, sets int, chunkSize int64, cands []candidate) ([][]placed, error) {
	type server struct {
		c      candidate
		score  int64
		disks  []int64 // per-disk score, parallel to c.Disks
		domain string
	}
	servers := make([]*server, 0, len(cands))
	domains := map[string]bool{}
	for _, c := range cands {
		if len(c.Disks) == 0 {
			continue
		}
		s := &server{c: c, domain: c.FaultDomain, disks: make([]int64, len(c.Disks))}
		if s.domain == "" {
			s.domain = c.Name
		}
		for i, d := range c.Disks {
			s.disks[i] = d.FreeBytes - chunkSize*int64(d.ActiveChunks)
			s.score += s.disks[i]
		}
		servers = append(servers, s)
		domains[s.domain] = true
	}
	width := l.Width()
	if len(domains) < width {
		return nil, &PlacementError{Layout: l.String(), Need: width, Online: len(servers), Domains: len(domains)}
	}
	better := func(a, b *server) int {
		if c := cmp.Compare(b.score, a.score); c != 0 {
			return c
		}
		if c := cmp.Compare(a.domain, b.domain); c != 0 {
			return c
		}
		if c := cmp.Compare(a.c.Name, b.c.Name); c != 0 {
			return c
		}
		return cmp.Compare(a.c.ID, b.c.ID)
	}
	out := make([][]placed, sets)
	for i := range out {
		// The best server of each domain, then the best domains.
		best := map[string]*server{}
		for _, s := range servers {
			if b, ok := best[s.domain]; !ok || better(s, b) < 0 {
				best[s.domain] = s
			}
		}
		offers := make([]*server, 0, len(best))
		for _, s := range best {
			offers = append(offers, s)
		}
		slices.SortFunc(offers, better)
		members := make([]placed, width)
		for j, s := range offers[:width] {
			d := 0
			for k := range s.disks {
				if s.disks[k] > s.disks[d] {
					d = k
				}
			}
			members[j] = placed{ChunkserverID: s.c.ID, DiskID: s.c.Disks[d].ID}
			s.disks[d] -= chunkSize
			s.score -= chunkSize
		}
		out[i] = members
	}
	return out, nil
}

// setCount returns how many sets of setSize bytes hold size bytes.
func setCount(size, setSize int64) int64 {
	n := size / setSize
	if size%setSize != 0 {
		n++
	}
	return n
}

// placeReplacement chooses where a new chunk replacing a lost member goes:
// the best server (ranked as place ranks them) whose fault domain the set's
// other members do not use, on its best disk. It reports false if there is
// none.
func placeReplacement(chunkSize int64, cands []candidate, usedDomains map[string]bool) (placed, bool) {
	var (
		best      placed
		bestScore int64
		found     bool
	)
	for _, c := range cands {
		domain := c.FaultDomain
		if domain == "" {
			domain = c.Name
		}
		if usedDomains[domain] || len(c.Disks) == 0 {
			continue
		}
		var score int64
		d, dScore := 0, int64(0)
		for i, disk := range c.Disks {
			s := disk.FreeBytes - chunkSize*int64(disk.ActiveChunks)
			score += s
			if i == 0 || s > dScore {
				d, dScore = i, s
			}
		}
		if !found || score > bestScore {
			best, bestScore, found = placed{ChunkserverID: c.ID, DiskID: c.Disks[d].ID}, score, true
		}
	}
	return best, found
}
