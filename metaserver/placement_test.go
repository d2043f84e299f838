package metaserver

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/chunkraid/chunkraid/metaserver/api"
)

const mib = int64(1) << 20

// server returns a candidate with one disk of free bytes.
func server(id int64, name, domain string, free int64, active int) candidate {
	return candidate{ID: id, Name: name, FaultDomain: domain,
		Disks: []candidateDisk{{ID: id * 100, FreeBytes: free, ActiveChunks: active}}}
}

func TestPlace(t *testing.T) {
	mirror2 := api.Layout{Kind: api.LayoutMirror, Copies: 2}
	mirror3 := api.Layout{Kind: api.LayoutMirror, Copies: 3}
	three := []candidate{server(1, "a", "", 10*gib, 0), server(2, "b", "", 10*gib, 0), server(3, "c", "", 10*gib, 0)}
	tests := []struct {
		name   string
		layout api.Layout
		sets   int
		cands  []candidate
		// want lists the chunkserver IDs of each set's members, best first.
		want    [][]int64
		wantErr string
	}{
		{
			name: "mirror:2 on three equal servers spreads sets", layout: mirror2, sets: 3, cands: three,
			want: [][]int64{{1, 2}, {3, 1}, {2, 3}},
		},
		{
			name: "mirror:3 on three servers uses all", layout: mirror3, sets: 2, cands: three,
			want: [][]int64{{1, 2, 3}, {1, 2, 3}},
		},
		{
			name: "most free first", layout: mirror2, sets: 1,
			cands: []candidate{server(1, "a", "", 1*gib, 0), server(2, "b", "", 5*gib, 0), server(3, "c", "", 3*gib, 0)},
			want:  [][]int64{{2, 3}},
		},
		{
			name: "existing active chunks count against free space", layout: mirror2, sets: 1,
			// b has most free bytes but 40 chunks of 64 MiB already.
			cands: []candidate{server(1, "a", "", 2*gib, 0), server(2, "b", "", 3*gib, 40), server(3, "c", "", 2*gib, 1)},
			want:  [][]int64{{1, 3}},
		},
		{
			name: "members in distinct fault domains", layout: mirror2, sets: 2,
			cands: []candidate{
				server(1, "a1", "rack-a", 9*gib, 0), server(2, "a2", "rack-a", 8*gib, 0),
				server(3, "b1", "rack-b", 1*gib, 0),
			},
			want: [][]int64{{1, 3}, {1, 3}},
		},
		{
			name: "empty fault domain means the server's own", layout: mirror3, sets: 1,
			cands: []candidate{server(1, "a", "", gib, 0), server(2, "b", "", gib, 0), server(3, "c", "rack-c", gib, 0)},
			want:  [][]int64{{1, 2, 3}},
		},
		{
			name: "a server's name is its default fault domain", layout: mirror3, sets: 1,
			cands:   []candidate{server(1, "a", "", gib, 0), server(2, "b", "", gib, 0), server(3, "c", "b", gib, 0)},
			wantErr: "mirror:3 needs 3 chunkservers in distinct fault domains; 3 are online in 2 fault domains",
		},
		{
			name: "servers without disks are not candidates", layout: mirror2, sets: 1,
			cands:   []candidate{server(1, "a", "", gib, 0), {ID: 2, Name: "b"}},
			wantErr: "mirror:2 needs 2 chunkservers in distinct fault domains; 1 is online",
		},
		{
			name: "mirror:3 with two servers", layout: mirror3, sets: 1, cands: three[:2],
			wantErr: "mirror:3 needs 3 chunkservers in distinct fault domains; 2 are online",
		},
		{
			name: "mirror:3 with three servers in two domains", layout: mirror3, sets: 1,
			cands:   []candidate{server(1, "a", "r1", gib, 0), server(2, "b", "r1", gib, 0), server(3, "c", "r2", gib, 0)},
			wantErr: "mirror:3 needs 3 chunkservers in distinct fault domains; 3 are online in 2 fault domains",
		},
		{
			name: "no servers", layout: mirror2, sets: 1,
			wantErr: "mirror:2 needs 2 chunkservers in distinct fault domains; 0 are online",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := place(tt.layout, tt.sets, 64*mib, tt.cands)
			if tt.wantErr != "" {
				var pe *PlacementError
				if !errors.As(err, &pe) || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ids := make([][]int64, len(got))
			for i, set := range got {
				for _, m := range set {
					ids[i] = append(ids[i], m.ChunkserverID)
					if m.DiskID != m.ChunkserverID*100 {
						t.Errorf("set %d: disk %d is not on chunkserver %d", i, m.DiskID, m.ChunkserverID)
					}
				}
			}
			if fmt.Sprint(ids) != fmt.Sprint(tt.want) {
				t.Errorf("placement = %v, want %v", ids, tt.want)
			}
		})
	}
}

func TestPlaceBalancesAndNeverDoublesUp(t *testing.T) {
	cands := []candidate{
		server(1, "a", "", 10*gib, 0), server(2, "b", "", 10*gib, 0),
		server(3, "c", "", 10*gib, 0), server(4, "d", "", 10*gib, 0),
	}
	for _, l := range []api.Layout{
		{Kind: api.LayoutMirror, Copies: 2}, {Kind: api.LayoutMirror, Copies: 3},
		{Kind: api.LayoutEC, K: 2, M: 1}, {Kind: api.LayoutEC, K: 2, M: 2},
	} {
		const sets = 60
		got, err := place(l, sets, 64*mib, cands)
		if err != nil {
			t.Fatal(err)
		}
		perServer := map[int64]int{}
		for i, set := range got {
			if len(set) != l.Width() {
				t.Fatalf("%s set %d has %d members", l, i, len(set))
			}
			seen := map[int64]bool{}
			for _, m := range set {
				if seen[m.ChunkserverID] {
					t.Fatalf("%s set %d: two members on chunkserver %d", l, i, m.ChunkserverID)
				}
				seen[m.ChunkserverID] = true
				perServer[m.ChunkserverID]++
			}
		}
		// Equal servers end up with equal shares.
		want := sets * l.Width() / len(cands)
		for id, n := range perServer {
			if n != want {
				t.Errorf("%s: chunkserver %d got %d chunks, want %d (%v)", l, id, n, want, perServer)
			}
		}
	}
}

func TestPlacePicksDisks(t *testing.T) {
	// One server with two disks; the fuller disk gets chunks once the
	// emptier one has been filled down to it.
	a := candidate{ID: 1, Name: "a", Disks: []candidateDisk{
		{ID: 10, FreeBytes: 256 * mib}, {ID: 11, FreeBytes: 128 * mib},
	}}
	b := server(2, "b", "", 100*gib, 0)
	got, err := place(api.Layout{Kind: api.LayoutMirror, Copies: 2}, 4, 64*mib, []candidate{a, b})
	if err != nil {
		t.Fatal(err)
	}
	var disks []int64
	for _, set := range got {
		for _, m := range set {
			if m.ChunkserverID == 1 {
				disks = append(disks, m.DiskID)
			}
		}
	}
	// Scores of disk 10/11: 256/128 -> 192/128 -> 128/128 -> 64/128 (tie: first disk) -> 64/64.
	if fmt.Sprint(disks) != "[10 10 10 11]" {
		t.Errorf("disks on a = %v, want [10 10 10 11]", disks)
	}
}

func TestSetCount(t *testing.T) {
	tests := []struct{ size, chunk, want int64 }{
		{1, 64 * mib, 1},
		{64 * mib, 64 * mib, 1},
		{64*mib + 4096, 64 * mib, 2},
		{10 * gib, 10 * gib, 1},
		{1<<63 - 4096, 1 << 20, 1 << 43},
	}
	for _, tt := range tests {
		if got := setCount(tt.size, tt.chunk); got != tt.want {
			t.Errorf("setCount(%d, %d) = %d, want %d", tt.size, tt.chunk, got, tt.want)
		}
	}
}

func TestPlaceReplacement(t *testing.T) {
	const gib = 1 << 30
	cands := []candidate{
		{ID: 1, Name: "a", FaultDomain: "r1", Disks: []candidateDisk{{ID: 11, FreeBytes: 100 * gib}}},
		{ID: 2, Name: "b", FaultDomain: "r2", Disks: []candidateDisk{{ID: 21, FreeBytes: 10 * gib}, {ID: 22, FreeBytes: 50 * gib}}},
		{ID: 3, Name: "c", Disks: []candidateDisk{{ID: 31, FreeBytes: 40 * gib, ActiveChunks: 2}}},
		{ID: 4, Name: "d", FaultDomain: "r1", Disks: nil},
	}
	for _, tt := range []struct {
		used     string
		want     placed
		wantNone bool
	}{
		{"", placed{1, 11}, false},
		{"r1", placed{2, 22}, false},    // b: 60 GiB beats c: 40 − 2 chunks
		{"r1 r2", placed{3, 31}, false}, // c's domain is its name
		{"r1 r2 c", placed{}, true},
	} {
		used := map[string]bool{}
		for _, d := range strings.Fields(tt.used) {
			used[d] = true
		}
		got, ok := placeReplacement(gib, cands, used)
		if ok == tt.wantNone || got != tt.want {
			t.Errorf("used %q: got %+v %v, want %+v", tt.used, got, ok, tt.want)
		}
	}
}
