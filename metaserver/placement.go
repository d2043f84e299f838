package metaserver

import (
	"container/heap"
	"fmt"

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
//
// Each domain keeps its servers in a heap, and the domains are in a heap by
// their best server: a set costs O(width · log n), so a cluster of 10,000
// chunkservers places a million chunks in seconds (TestScaleModel).
func place(l api.Layout, sets int, chunkSize int64, cands []candidate) ([][]placed, error) {
	byDomain := map[string]*domainHeap{}
	online := 0
	for _, c := range cands {
		if len(c.Disks) == 0 {
			continue
		}
		s := &rankedServer{c: c, domain: c.FaultDomain, disks: make([]int64, len(c.Disks))}
		if s.domain == "" {
			s.domain = c.Name
		}
		for i, d := range c.Disks {
			s.disks[i] = d.FreeBytes - chunkSize*int64(d.ActiveChunks)
			s.score += s.disks[i]
		}
		d := byDomain[s.domain]
		if d == nil {
			d = &domainHeap{name: s.domain}
			byDomain[s.domain] = d
		}
		d.servers = append(d.servers, s)
		online++
	}
	width := l.Width()
	if len(byDomain) < width {
		return nil, &PlacementError{Layout: l.String(), Need: width, Online: online, Domains: len(byDomain)}
	}
	domains := &domainsHeap{}
	for _, d := range byDomain {
		heap.Init(d)
		domains.ds = append(domains.ds, d)
	}
	heap.Init(domains)
	out := make([][]placed, sets)
	chosen := make([]*domainHeap, width)
	for i := range out {
		members := make([]placed, width)
		for j := range width {
			d := heap.Pop(domains).(*domainHeap)
			s := d.servers[0]
			k := 0
			for x := range s.disks {
				if s.disks[x] > s.disks[k] {
					k = x
				}
			}
			members[j] = placed{ChunkserverID: s.c.ID, DiskID: s.c.Disks[k].ID}
			s.disks[k] -= chunkSize
			s.score -= chunkSize
			heap.Fix(d, 0)
			chosen[j] = d
		}
		for _, d := range chosen {
			heap.Push(domains, d)
		}
		out[i] = members
	}
	return out, nil
}

// rankedServer is a candidate with its score for place.
type rankedServer struct {
	c      candidate
	score  int64
	disks  []int64 // per-disk score, parallel to c.Disks
	domain string
}

// better orders servers best first: the higher score, then the fault
// domain, the name and the ID.
func better(a, b *rankedServer) bool {
	if a.score != b.score {
		return a.score > b.score
	}
	if a.domain != b.domain {
		return a.domain < b.domain
	}
	if a.c.Name != b.c.Name {
		return a.c.Name < b.c.Name
	}
	return a.c.ID < b.c.ID
}

// domainHeap is the servers of one fault domain, best first.
type domainHeap struct {
	name    string
	servers []*rankedServer
}

func (d *domainHeap) Len() int           { return len(d.servers) }
func (d *domainHeap) Less(i, j int) bool { return better(d.servers[i], d.servers[j]) }
func (d *domainHeap) Swap(i, j int)      { d.servers[i], d.servers[j] = d.servers[j], d.servers[i] }
func (d *domainHeap) Push(x any)         { d.servers = append(d.servers, x.(*rankedServer)) }
func (d *domainHeap) Pop() any {
	x := d.servers[len(d.servers)-1]
	d.servers = d.servers[:len(d.servers)-1]
	return x
}

// domainsHeap is the fault domains, ordered by their best server.
type domainsHeap struct{ ds []*domainHeap }

func (h *domainsHeap) Len() int           { return len(h.ds) }
func (h *domainsHeap) Less(i, j int) bool { return better(h.ds[i].servers[0], h.ds[j].servers[0]) }
func (h *domainsHeap) Swap(i, j int)      { h.ds[i], h.ds[j] = h.ds[j], h.ds[i] }
func (h *domainsHeap) Push(x any)         { h.ds = append(h.ds, x.(*domainHeap)) }
func (h *domainsHeap) Pop() any {
	x := h.ds[len(h.ds)-1]
	h.ds = h.ds[:len(h.ds)-1]
	return x
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
