package metaserver

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

// TestPlaceMatchesReference: place, with its heaps, chooses exactly what
// the plain scan it replaced chose (placeReference, below), on random
// clusters with ties, uneven disks and fault domains of several servers.
func TestPlaceMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	layouts := []api.Layout{{Kind: api.LayoutMirror, Copies: 2}, {Kind: api.LayoutMirror, Copies: 3}, {Kind: api.LayoutEC, K: 4, M: 2}}
	for trial := range 200 {
		var cands []candidate
		n := 6 + rng.IntN(30)
		for i := range n {
			c := candidate{ID: int64(i + 1), Name: fmt.Sprintf("cs%02d", rng.IntN(n)), FaultDomain: fmt.Sprintf("rack%d", rng.IntN(8))}
			if rng.IntN(4) == 0 {
				c.FaultDomain = ""
			}
			for d := range 1 + rng.IntN(3) {
				c.Disks = append(c.Disks, candidateDisk{ID: int64(100*i + d), FreeBytes: int64(rng.IntN(4)) * gib, ActiveChunks: rng.IntN(3)})
			}
			cands = append(cands, c)
		}
		l := layouts[rng.IntN(len(layouts))]
		sets := 1 + rng.IntN(40)
		got, gerr := place(l, sets, 64*mib, cands)
		want, werr := placeReference(l, sets, 64*mib, cands)
		if fmt.Sprint(gerr) != fmt.Sprint(werr) || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("trial %d, %s, %d sets: place %v (%v), the scan %v (%v)", trial, l, sets, got, gerr, want, werr)
		}
	}
}

// TestScaleModel is the scale model of docs/scale.md in a test: 10,000
// chunkservers in 1,000 fault domains (racks of ten) receive a million
// chunks of 10 GiB, as mirror:3 volumes of 1,000 sets (10 TiB) each; then one
// chunkserver is lost and every member it held is replaced as the leader
// replaces them. It asserts what the model relies on — every set in three
// distinct racks, every server within a few chunks of the mean, the lost
// server's members replaced on many servers outside their sets' racks, none
// taking more than a few — and logs the figures the model uses: the time
// to place and to plan the replacements, chunks per server, replacement
// targets.
func TestScaleModel(t *testing.T) {
	const (
		servers   = 10_000
		racks     = 1_000
		chunk     = 10 << 30
		disk      = 16 << 40 // 16 TiB per server, one disk
		setsOfVol = 1000
	)
	l := api.Layout{Kind: api.LayoutMirror, Copies: 3}
	cands := make([]candidate, servers)
	for i := range cands {
		cands[i] = candidate{ID: int64(i + 1), Name: fmt.Sprintf("cs%05d", i), FaultDomain: fmt.Sprintf("rack%04d", i%racks),
			Disks: []candidateDisk{{ID: int64(i + 1), FreeBytes: disk}}}
	}
	domainOf := func(id int64) string { return cands[id-1].FaultDomain }
	const chunks = 1_000_000
	sets := chunks / l.Width()
	var all [][]placed
	start := time.Now()
	for len(all) < sets {
		n := min(setsOfVol, sets-len(all))
		got, err := place(l, n, chunk, cands)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, got...)
		// What the store does between two volumes: the chunks now count
		// against their disks.
		for _, set := range got {
			for _, m := range set {
				cands[m.ChunkserverID-1].Disks[0].ActiveChunks++
			}
		}
	}
	took := time.Since(start)
	perServer := make([]int, servers)
	for i, set := range all {
		racksUsed := map[string]bool{}
		for _, m := range set {
			perServer[m.ChunkserverID-1]++
			racksUsed[domainOf(m.ChunkserverID)] = true
		}
		if len(racksUsed) != l.Width() {
			t.Fatalf("set %d spans %d racks, want %d", i, len(racksUsed), l.Width())
		}
	}
	lo, hi := slices.Min(perServer), slices.Max(perServer)
	mean := float64(len(all)*l.Width()) / servers
	t.Logf("placed %d chunks (%d mirror:3 sets) on %d chunkservers in %d racks in %v (%.1f µs per set); chunks per server: mean %.1f, min %d, max %d",
		len(all)*l.Width(), len(all), servers, racks, took.Round(time.Millisecond), float64(took.Microseconds())/float64(len(all)), mean, lo, hi)
	if float64(hi) > mean+2 || float64(lo) < mean-2 {
		t.Errorf("chunks per server from %d to %d around a mean of %.1f: placement does not spread", lo, hi, mean)
	}

	// One chunkserver lost: each of its members gets a replacement outside
	// its set's racks, as the leader's replaceMembers places them (the
	// chosen disk counts one chunk more at once).
	lost := int64(4242)
	var members [][]placed
	for _, set := range all {
		if slices.ContainsFunc(set, func(m placed) bool { return m.ChunkserverID == lost }) {
			members = append(members, set)
		}
	}
	alive := slices.DeleteFunc(slices.Clone(cands), func(c candidate) bool { return c.ID == lost })
	start = time.Now()
	targets := map[int64]int{}
	for _, set := range members {
		used := map[string]bool{}
		for _, m := range set {
			if m.ChunkserverID != lost {
				used[domainOf(m.ChunkserverID)] = true
			}
		}
		p, ok := placeReplacement(chunk, alive, used)
		if !ok {
			t.Fatal("no chunkserver can take a replacement")
		}
		if used[domainOf(p.ChunkserverID)] {
			t.Fatalf("a replacement went to rack %s, which its set uses", domainOf(p.ChunkserverID))
		}
		targets[p.ChunkserverID]++
		takeDisk(alive, p.DiskID)
	}
	planned := time.Since(start)
	most := 0
	for _, n := range targets {
		most = max(most, n)
	}
	t.Logf("chunkserver %d lost with %d members: replacements planned in %v on %d distinct chunkservers, at most %d on one; at %d replacements per leader tick that is %d ticks",
		lost, len(members), planned.Round(time.Millisecond), len(targets), most, maxReplacementsPerTick, (len(members)+maxReplacementsPerTick-1)/maxReplacementsPerTick)
	if len(targets) < len(members)/2 || most > 2 {
		t.Errorf("%d replacements went to %d chunkservers, at most %d on one: a rebuild would queue on few targets", len(members), len(targets), most)
	}
}

// placeReference is place as it was before its heaps: for every set, scan
// every server for each domain's best, sort the domains. The test checks
// that place chooses the same.
func placeReference(l api.Layout, sets int, chunkSize int64, cands []candidate) ([][]placed, error) {
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
