// Package nbd speaks the Network Block Device protocol (fixed newstyle
// handshake, simple and structured replies, block status with named meta
// contexts): a pipelined Server that exports chunks and a pipelined Client
// that the RAID layer uses to reach them. It imports only the standard
// library so that both daemons can depend on it.
//
// The protocol is the NBD project's doc/proto.md. What follows draws every
// message this package encodes or decodes. All integers are big-endian
// (network byte order); offsets in the diagrams are byte offsets within the
// message.
//
// # Handshake
//
// The server opens with a greeting (18 bytes):
//
//	0          8          16       18
//	+----------+----------+--------+
//	| NBDMAGIC | IHAVEOPT | hflags |
//	+----------+----------+--------+
//
// NBDMAGIC is 0x4e42444d41474943, IHAVEOPT 0x49484156454f5054; hflags: bit 0
// FIXED_NEWSTYLE, bit 1 NO_ZEROES. The client answers with 32
// bits of client flags (bit 0 C_FIXED_NEWSTYLE, bit 1 C_NO_ZEROES); any other
// bit makes the server drop the connection.
//
// Then the client sends options, one at a time (16-byte header + data):
//
//	0          8        12       16
//	+----------+--------+--------+--------+
//	| IHAVEOPT | option | length | data   |
//	+----------+--------+--------+--------+
//
// This package refuses an option whose length exceeds MaxOptionLength
// (64 KiB) and any string (export name, context name, query) longer than
// MaxStringLength (4 KiB).
//
// Every option except EXPORT_NAME is answered by one or more option replies
// (20-byte header + data):
//
//	0                 8        12       16       20
//	+-----------------+--------+--------+--------+--------+
//	| 0x3e889045565a9 | option | type   | length | data   |
//	+-----------------+--------+--------+--------+--------+
//
// Reply types with bit 31 set are errors; their data is a message for a
// person. Option data layouts:
//
//	EXPORT_NAME data:   name (the whole data)
//	EXPORT_NAME reply:  size u64 | tflags u16 | 124 zero bytes unless both
//	                    sides set NO_ZEROES (10 or 134 bytes, no reply header)
//	INFO / GO data:     namelen u32 | name | n u16 | n × info type u16
//	LIST_META_CONTEXT,
//	SET_META_CONTEXT:   namelen u32 | export name | nq u32 |
//	                    nq × (qlen u32 | query)
//	REP_SERVER:         namelen u32 | name | [description]
//	REP_META_CONTEXT:   context id u32 | context name
//	REP_INFO:           info type u16 | info payload
//	  INFO_EXPORT       (type 0): size u64 | tflags u16          (12 bytes)
//	  INFO_NAME         (type 1): name                           (2+n bytes)
//	  INFO_DESCRIPTION  (type 2): text                           (2+n bytes)
//	  INFO_BLOCK_SIZE   (type 3): min u32 | preferred u32 | max u32 (14 bytes)
//
// # Transmission
//
// Request (28-byte header; WRITE is followed by length bytes of data):
//
//	0            4        6        8        16       24       28
//	+------------+--------+--------+--------+--------+--------+
//	| 0x25609513 | cflags | type   | cookie | offset | length |
//	+------------+--------+--------+--------+--------+--------+
//
// Simple reply (16 bytes; a successful READ is followed by length bytes):
//
//	0            4        8        16
//	+------------+--------+--------+
//	| 0x67446698 | errno  | cookie |
//	+------------+--------+--------+
//
// Structured reply chunk (20-byte header + payload), used once the client
// negotiated STRUCTURED_REPLY; the last chunk of a reply carries flag DONE:
//
//	0            4        6        8        16       20
//	+------------+--------+--------+--------+--------+---------+
//	| 0x668e33ef | flags  | type   | cookie | length | payload |
//	+------------+--------+--------+--------+--------+---------+
//
// Chunk payloads:
//
//	NONE (0):          empty
//	OFFSET_DATA (1):   offset u64 | data (length-8 bytes)
//	OFFSET_HOLE (2):   offset u64 | hole size u32
//	BLOCK_STATUS (5):  context id u32 | n × descriptor
//	  descriptor:      extent length u32 | status flags u32   (8 bytes)
//	ERROR (0x8001):    errno u32 | msglen u16 | message
//	ERROR_OFFSET (0x8002): errno u32 | msglen u16 | message | offset u64
//
// # Server behaviour
//
// The server advertises FIXED_NEWSTYLE and NO_ZEROES and implements the
// options EXPORT_NAME, INFO, GO, LIST, ABORT, STRUCTURED_REPLY,
// LIST_META_CONTEXT and SET_META_CONTEXT; anything else gets ERR_UNSUP. Its
// exports carry HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
// SEND_WRITE_ZEROES, CAN_MULTI_CONN and (with structured replies) SEND_DF,
// and it announces the block sizes 1 / 4096 / 32 MiB. Meta contexts are
// base:allocation plus any named contexts given in ServerConfig.
//
// Per connection, one goroutine reads requests (and WRITE payloads) and
// queues them for a pool of workers, started as concurrency demands; at most
// MaxInFlight requests are between being read and their reply being written.
// Replies go out as requests complete, in any order. Each reply is written
// whole: finished replies are queued, and the worker that finds no write in
// progress writes everything queued in one writev, so replies of different
// requests never interleave and a busy connection needs fewer system calls
// than replies. FLUSH is a Sync of the export: a write is acknowledged only
// after WriteAt returned, so Sync covers every write acknowledged before the
// FLUSH without ordering requests further. Data buffers come from
// size-classed pools. A request for bytes past the end gets EINVAL (ENOSPC
// for WRITE and WRITE_ZEROES), a READ or WRITE over 32 MiB EINVAL, except
// that a WRITE whose payload exceeds 32 MiB closes the connection; TRIM,
// WRITE_ZEROES and BLOCK_STATUS may cover any in-range length, as the
// protocol allows for requests without payload.
//
// # Client behaviour
//
// The client negotiates STRUCTURED_REPLY, then SET_META_CONTEXT if asked for
// contexts, then GO (falling back to EXPORT_NAME if the server does not know
// GO). It keeps many requests in flight on one connection, matches replies by
// cookie in a single reader goroutine, splits I/O larger than the server's
// maximum payload, and fails every pending and later request with an error
// wrapping ErrClosed once the connection breaks.
package nbd
