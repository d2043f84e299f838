// Package bitmap holds the two bitmaps of REMB (Recoverable External Memory
// Bitmap): the write-intent bitmap a host keeps for each RAID set (WIB) and
// the LOG bitmap a chunkserver keeps for each chunk (Log), with their
// persisted formats and the timeout budget they rely on (budget.Validate).
//
// The WIB tells a set which regions may differ between its members, so
// that a resync copies only those. It lives in RAM (a file in /dev/shm,
// mapped shared) so that marking costs no I/O and survives a restart of
// hostd. The LOG bitmaps let a new host rebuild the WIB after the old host
// died: the OR of the LOG bitmaps of a set's members covers every region
// in which they may differ (Theorem 2), provided the rules below hold.
//
// # WIB file
//
// A header page of 4096 bytes, then the bits. All integers little-endian;
// the first 512 bytes of the page are the header, the rest of the page is
// zero.
//
//	 0               8       12      16              24              32
//	 +---------------+-------+-------+---------------+---------------+
//	 | magic         | ver=1 | page  | size (u64)    | region size   |
//	 | "CRWIB\0\0\0" | (u32) | =4096 | bytes covered | (u64, 2^k)    |
//	 +---------------+-------+-------+---------------+---------------+
//	32              40              48              56   58       64
//	 +---------------+---------------+---------------+----+--------+
//	 | regions (u64) | epoch (u64)   | set index     |vlen| zero   |
//	 | ceil(size/rs) |               | (u64)         |u16 |        |
//	 +---------------+---------------+---------------+----+--------+
//	64                                  64+vlen                  508     512
//	 +-------------------------------------+-----------------------+-------+
//	 | volume name (vlen ≤ 255 bytes)      | zero                  | crc32c|
//	 +-------------------------------------+-----------------------+-------+
//	512 ............................................................ 4096
//	 | zero                                                                |
//	4096
//	 +---------------+---------------+---- ... ---+
//	 | word 0 (u64)  | word 1 (u64)  |            |  ceil(regions/64) words
//	 +---------------+---------------+---- ... ---+
//
// The CRC is CRC32C (Castagnoli) of bytes 0..508. Region i is bit i%64 of
// word i/64, that is bit i%8 of byte 4096+i/8; bits past the last region
// are zero. The file is exactly 4096 + 8·ceil(regions/64) bytes long. A
// header that fails these checks is ErrCorrupt (ErrVersion for another
// version); one that is intact but names another volume, set, epoch, size
// or region size is ErrMismatch. Either way the file is not used and the
// set is resynced in full. The file is locked (flock) while open.
//
// The bits carry no checksum, unlike the header: they change with every
// write, in RAM, and keeping a checksum current would put back on the write
// path the cost the WIB exists to remove. The file lives in tmpfs, which
// has no medium to decay; what it must survive is a killed process, and a
// shared mapping gives that for free.
//
// # WIB protocol
//
// The bits are the persistent part; beside them, in RAM only, each region
// has a state word updated with atomic compare-and-swap (no mutex on any
// path): the number of writes in flight, a sequence number bumped by every
// Begin and Mark, a resync flag (a copy of the region is running), a stale
// flag ("only a resync may clean this region") and a lock bit held by
// Clear and ResyncDone for two atomic operations.
//
//   - Write path: tok := w.Begin(off, n) before the write is sent (counts
//     the write in flight, then sets the bits); w.End(tok, ok) when every
//     member answered, ok meaning every member of the set holds the write.
//     End(tok, false) — a member failed or the set is degraded — marks the
//     regions stale.
//   - Lazy clean: w.Clear(region) clears the bit only if no write to the
//     region is in flight, no copy of it is running and the region is not
//     stale; it takes the lock
//     bit while it clears, and Begin waits for that lock before counting,
//     so a write that begins during a Clear finds its bit set again before
//     it is sent. A region is thus clean only when no write to it is in
//     flight and every write to it since the last resync reached every
//     member.
//   - Mark(off, n) records regions that may differ without a write to
//     track (an absent member, a merged LOG bitmap): it sets the bits and
//     the stale flag.
//   - Resync: t := w.ResyncStart(r); copy region r from an in-sync member
//     to the others; w.ResyncDone(t). Clear leaves the region alone during
//     the copy. ResyncDone clears the bit and the
//     stale flag only if no write was in flight at ResyncStart, none is in
//     flight now, and no Begin or Mark touched the region in between (the
//     sequence number did not move); otherwise the copy may have
//     overwritten a concurrent write on some member, so the region becomes
//     stale (even if it was not before) and is copied again.
//   - Reopen after a hostd restart: every region dirty in the file becomes
//     stale, because nothing is known about the writes that were in flight.
//
// The bits live in a shared mapping of a tmpfs file, so a write to them is
// in the file the moment it is made: a hostd killed at any instant leaves
// every bit that any Begin or Mark had set before it returned.
//
// # LOG bitmap
//
// A Log has two halves, current and history, one bit per region (64 MiB by
// default). Mark sets bits in current before the chunk writes the data;
// every period T the owner calls MaybeRotate, which does history :=
// current; current := 0, never sooner than T after the previous rotation.
// Hence current|history covers every write of the last T (Theorem 1): a
// bit set at time a leaves current at the next rotation r1 ≥ a and leaves
// history at the rotation after, r2 ≥ r1+T ≥ a+T.
//
// Durability protocol. A bit must be durable before the write it stands
// for touches the data, so that a chunkserver crash cannot lose it; a
// persist is needed only when a bit flips 0→1, at most once per region per
// period. The Log numbers its states with generations:
//
//	gen, _ := l.Mark(off, n)           // 0: nothing to wait for
//	if err := l.Sync(ctx, gen, persist); err != nil {
//		// the chunk is failed (ErrLogFailed) or ctx ended: do not write
//	}
//	// write the data
//
// Mark returns the generation in which each of its bits was set, so a
// second writer that finds a bit already set but not yet durable waits for
// the same persist as the writer that set it. Sync is a group commit: the
// first caller runs persist with MarshalBinary's bytes while later callers
// wait; persists never overlap, so the state on disk only moves forward. A
// failed persist fails the Log for good (a durability failure is fatal to
// the chunk).
//
// Pinning. While a set is degraded its surviving members are pinned (DESIGN
// rule 3): a pinned Log rotates history |= current; current := 0, so it
// forgets nothing until Unpin; the pin is persisted and Pin returns the
// generation to Sync before hostd relies on it.
//
// # LOG persisted form
//
// Little-endian; n = ceil(regions/8) bytes per half:
//
//	 0               8       10      12      16              24
//	 +---------------+-------+-------+-------+---------------+
//	 | magic         | ver=1 | flags | zero  | size (u64)    |
//	 | "CRLOGBM\0"   | (u16) | (u16) | (u32) | chunk bytes   |
//	 +---------------+-------+-------+-------+---------------+
//	24              32              40          40+n        40+2n   44+2n
//	 +---------------+---------------+-----------+-----------+-------+
//	 | region size   | last rotation | current   | history   | crc32c|
//	 | (u64, 2^k)    | (i64 unix ns) | (n bytes) | (n bytes) |       |
//	 +---------------+---------------+-----------+-----------+-------+
//
// flags bit 0: pinned; the other bits are zero. Region i is bit i%8 of
// byte i/8 of each half; padding bits are zero. The CRC is CRC32C of every
// byte before it. Snapshot returns current|history in the same bit layout,
// which is what the chunkserver publishes as the NBD meta context
// "chunkraid:log".
//
// # Rules the theorems rely on
//
// Theorem 2 (the OR of the members' LOG bitmaps covers every region in
// which they may differ) holds when: every write is marked at a member
// before it is written there and completes or is failed by the host
// within t_io (DESIGN rule 1); T ≥ 3·t_io, checked by budget.Validate — a
// copy arrives within t_io of being sent, the host fails a member that
// missed it t_io after sending, and its pin reaches the survivors within
// t_io more, while the bit lives at least T; the host pins the survivors
// before it carries on degraded (rule 3); and after the host dies, the new
// host fences (rule 2) and reads the LOG bitmaps within T − t_io of the
// death: a write sent earlier either completed everywhere or was noticed
// and pinned, and a later one is still in its first T at every member that
// has it. If a volume may stay unattached longer than that, the chunkserver
// must pin the LOG of a chunk whose host went away without detaching, or
// the recovery must resync the set in full.
package bitmap
