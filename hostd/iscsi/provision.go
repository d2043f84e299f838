package iscsi

import (
	"context"
)

// Trimmer is a Backend that can deallocate a range: UNMAP and WRITE SAME
// with the UNMAP bit become Trim. Later reads of a trimmed range must
// return zeros (the logical unit reports LBPRZ). A Backend that implements
// Trimmer is reported thin provisioned (LBPME in READ CAPACITY (16); LBPU,
// LBPWS and LBPWS10 in the Logical Block Provisioning VPD page).
type Trimmer interface {
	Trim(ctx context.Context, off, length int64) error
}

// Zeroer is a Backend that writes zeros without being sent them: a WRITE
// SAME of a zero block without the UNMAP bit becomes WriteZeroes. Without
// it such a WRITE SAME is carried out as ordinary writes.
type Zeroer interface {
	WriteZeroes(ctx context.Context, off, length int64) error
}

// Mapper is a Backend that knows which ranges are allocated: GET LBA STATUS
// reports them. Allocated describes [off, off+length) from off onwards as
// consecutive extents; it may describe less than length, but at least one
// byte. Without it GET LBA STATUS reports every block as mapped, which SBC
// allows ("mapped or unknown").
type Mapper interface {
	Allocated(ctx context.Context, off, length int64) ([]Extent, error)
}

// Extent is a run of bytes that is either allocated or a hole (deallocated:
// it reads as zeros).
type Extent struct {
	Length int64
	Hole   bool
}

// Limits of the thin provisioning commands, reported in the Block Limits
// VPD page.
const (
	// maxUnmapBytes bounds the bytes one UNMAP may deallocate: a trim of a
	// partial RAID stripe is a write of zeros, so its cost grows with the
	// range. (libiscsi also holds a count above 2^20 blocks insane.)
	maxUnmapBytes = 256 << 20
	// maxUnmapDescriptors bounds the block descriptors of one UNMAP.
	maxUnmapDescriptors = 256
	// maxLBAStatusBytes bounds the range one GET LBA STATUS asks the back
	// end about, and maxLBAStatusDescriptors the descriptors it returns.
	maxLBAStatusBytes       = 1 << 30
	maxLBAStatusDescriptors = 1024
)

// Provisioning status of an LBA status descriptor (SBC-4 6.7.2).
const (
	provMapped      = 0 // mapped, or unknown
	provDeallocated = 1
)

func (lu *logicalUnit) maxUnmapBlocks() uint32 { return maxUnmapBytes / lu.blockSize }

// provisioningSpecs are the commands of a thin provisioned logical unit.
func provisioningSpecs() []*cmdSpec {
	ff := byte(0xff)
	return []*cmdSpec{
		{name: "UNMAP", medium: true, op: 0x42, access: accWrite, usage: []byte{0x42, 0x01, 0, 0, 0, 0, 0, ff, ff, 0},
			decode: decodeUnmap, exec: execUnmap},
		{name: "GET LBA STATUS", op: 0x9e, sa: 0x12, hasSA: true, access: accRead,
			usage:  []byte{0x9e, 0x12, ff, ff, ff, ff, ff, ff, ff, ff, ff, ff, ff, ff, 0, 0},
			decode: decodeGetLBAStatus, exec: execGetLBAStatus},
	}
}

func decodeUnmap(lu *logicalUnit, c *scsiCmd) *sense {
	cdb := c.cdb
	if cdb[1]&0x01 != 0 { // ANCHOR: anchored LBAs are not supported (ANC_SUP=0)
		return invalidField(1, 0)
	}
	n := uint32(be16(cdb[7:]))
	switch {
	case n == 0: // nothing to unmap, not an error (SBC-3 5.28)
		return nil
	case n < 8:
		return senseParamLength
	}
	c.dir, c.outLen = dirOut, n
	return nil
}

// unmapRange is one block descriptor of an UNMAP parameter list.
type unmapRange struct {
	lba    uint64
	blocks uint32
}

// execUnmap deallocates the ranges of the UNMAP parameter list:
//
//	bytes 0-1  UNMAP DATA LENGTH (n-2)
//	bytes 2-3  UNMAP BLOCK DESCRIPTOR DATA LENGTH (16 per descriptor)
//	bytes 4-7  reserved
//	then per descriptor: LBA (8), NUMBER OF LOGICAL BLOCKS (4), reserved (4)
//
// Every descriptor is checked before anything is trimmed; an incomplete
// last descriptor is ignored.
func execUnmap(ctx context.Context, lu *logicalUnit, c *scsiCmd, out, _ []byte) result {
	if c.outLen == 0 {
		return good(nil)
	}
	if uint32(len(out)) < c.outLen || len(out) < 8 {
		return check(senseParamLength)
	}
	n := min(int(be16(out[2:])), len(out)-8) / 16
	if n > maxUnmapDescriptors {
		return check(invalidParam(2, -1))
	}
	ranges := make([]unmapRange, 0, n)
	var total uint64
	for i := range n {
		d := out[8+16*i:]
		r := unmapRange{lba: be64(d), blocks: be32(d[8:])}
		if s := lu.checkRange(r.lba, r.blocks); s != nil {
			return check(s)
		}
		total += uint64(r.blocks)
		if total > uint64(lu.maxUnmapBlocks()) {
			return check(invalidParam(8+16*i+8, -1))
		}
		if r.blocks > 0 {
			ranges = append(ranges, r)
		}
	}
	bs := int64(lu.blockSize)
	for _, r := range ranges {
		off, length := int64(r.lba)*bs, int64(r.blocks)*bs
		if err := lu.trim(ctx, off, length); err != nil {
			return lu.ioError(err, r.lba, true)
		}
	}
	return good(nil)
}

// trim deallocates a range under the extent locks, so that it is atomic
// with respect to COMPARE AND WRITE and ORWRITE.
func (lu *logicalUnit) trim(ctx context.Context, off, length int64) error {
	defer lu.locks.shared(off, length).unlock()
	return lu.trimmer.Trim(ctx, off, length)
}

func decodeGetLBAStatus(lu *logicalUnit, c *scsiCmd) *sense {
	lba := be64(c.cdb[2:])
	if lba >= lu.blocks() {
		return senseLBAOutOfRange
	}
	c.lba = lba
	c.alloc = be32(c.cdb[10:])
	c.dir = dirIn
	return nil
}

// execGetLBAStatus reports the provisioning status of the blocks from the
// given LBA on (SBC-4 5.8):
//
//	bytes 0-3  PARAMETER DATA LENGTH (n-4)
//	bytes 4-7  reserved
//	then per descriptor: LBA (8), NUMBER OF LOGICAL BLOCKS (4),
//	PROVISIONING STATUS (1, low nibble), reserved (3)
//
// The first descriptor starts at the requested LBA. A block partly
// allocated counts as mapped.
func execGetLBAStatus(ctx context.Context, lu *logicalUnit, c *scsiCmd, _, _ []byte) result {
	bs := int64(lu.blockSize)
	capacity := lu.blocks()
	if c.lba >= capacity {
		return check(senseLBAOutOfRange)
	}
	span := min(capacity-c.lba, uint64(maxLBAStatusBytes/bs))
	maxDesc := maxLBAStatusDescriptors
	if c.alloc >= 24 {
		maxDesc = min(maxDesc, int(c.alloc-8)/16)
	}
	var runs []lbaRun
	if lu.mapper == nil {
		runs = []lbaRun{{blocks: span, status: provMapped}}
	} else {
		exts, err := lu.mapper.Allocated(ctx, int64(c.lba)*bs, int64(span)*bs)
		if err != nil {
			return lu.ioError(err, c.lba, false)
		}
		runs = blockRuns(exts, bs, span)
		if len(runs) == 0 {
			return check(newSense(senseHardwareError, ascInternalTargetFailure))
		}
	}
	if len(runs) > maxDesc {
		runs = runs[:maxDesc]
	}
	b := make([]byte, 8+16*len(runs))
	put32(b, uint32(len(b)-4))
	lba := c.lba
	for i, r := range runs {
		d := b[8+16*i:]
		put64(d, lba)
		put32(d[8:], uint32(r.blocks))
		d[12] = r.status
		lba += r.blocks
	}
	return good(truncate(b, c.alloc))
}

// lbaRun is a run of blocks with one provisioning status.
type lbaRun struct {
	blocks uint64
	status uint8
}

// blockRuns converts byte extents from the start of a range into runs of
// whole blocks, at most span blocks, each run at most 0xffffffff blocks (the
// width of a descriptor's count). A block is deallocated only if holes
// cover all of it.
func blockRuns(exts []Extent, bs int64, span uint64) []lbaRun {
	var runs []lbaRun
	add := func(blocks uint64, status uint8) {
		for blocks > 0 {
			if n := len(runs); n > 0 && runs[n-1].status == status && runs[n-1].blocks < 0xffffffff {
				k := min(blocks, 0xffffffff-runs[n-1].blocks)
				runs[n-1].blocks += k
				blocks -= k
				continue
			}
			k := min(blocks, 0xffffffff)
			runs = append(runs, lbaRun{blocks: k, status: status})
			blocks -= k
		}
	}
	limit := int64(span) * bs
	var pos int64  // bytes described so far
	var done int64 // blocks emitted so far, in bytes
	for _, e := range exts {
		if e.Length <= 0 || pos >= limit {
			break
		}
		end := min(pos+e.Length, limit)
		if e.Hole {
			// The whole blocks inside [pos, end) are deallocated; a
			// partial block before them is mapped.
			first := (pos + bs - 1) / bs * bs
			last := end / bs * bs
			if first < last {
				if first > done {
					add(uint64((first-done)/bs), provMapped)
				}
				add(uint64((last-first)/bs), provDeallocated)
				done = last
			}
		}
		pos = end
	}
	// Allocated bytes and partial blocks up to the last whole block
	// described are mapped.
	if whole := pos / bs * bs; whole > done {
		add(uint64((whole-done)/bs), provMapped)
		done = whole
	}
	if done < pos { // a final partial block
		add(1, provMapped)
	}
	return runs
}

// logicalBlockProvisioning is the payload of VPD page 0xB2 (SBC-4 6.6.4).
func (lu *logicalUnit) logicalBlockProvisioning() []byte {
	p := make([]byte, 4)
	if lu.trimmer != nil {
		// LBPU, LBPWS, LBPWS10; LBPRZ (bit 2, the low bit of SBC-4's
		// three-bit field): trimmed blocks read as zeros.
		p[1] = 0x80 | 0x40 | 0x20 | 0x04
		p[2] = 0x02 // PROVISIONING TYPE: thin provisioned
	}
	return p
}
