// Package iscsi is hostd's iSCSI target (RFC 7143): it exports each volume
// as a target with one logical unit, LUN 0, a SCSI block device (SBC-3)
// whose storage is a Backend.
//
// A Server holds the targets (AddTarget, AddTargetWith, UpdateTarget,
// RemoveTarget) and serves TCP connections (Serve). Each connection logs
// in (login.go: security and operational negotiation, CHAP in chap.go,
// text keys in text.go), then runs the full feature phase of its session
// (session.go): one reader goroutine receives
// PDUs and orders commands by CmdSN, every SCSI command runs on a worker
// goroutine of its own while it lasts (task.go) against the logical unit
// (scsi.go), and a single writer per connection (writer.go) stamps StatSN,
// ExpCmdSN and MaxCmdSN on each response as it goes out, batching PDUs
// into one writev. The reader never waits for the back end.
//
// On the data path a command costs one heap allocation, its task record;
// no PDU costs any. Data-Out is read from the socket straight into the
// command's buffer at its offset, Data-In is sent from the buffer the back
// end filled, cut to the initiator's MaxRecvDataSegmentLength, and buffers,
// outgoing PDU records and idle workers are reused.
//
// # Commands
//
// The logical unit implements TEST UNIT READY, REQUEST SENSE, INQUIRY (VPD
// pages 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2), READ CAPACITY (10) and (16),
// READ and WRITE (6/10/12/16) with FUA, WRITE AND VERIFY (10/12/16), VERIFY
// (10/12/16) with BYTCHK, WRITE SAME (10/16) with UNMAP and NDOB, COMPARE
// AND WRITE and ORWRITE (atomic against other writes), SYNCHRONIZE CACHE
// (10/16), PRE-FETCH (10/16), MODE SENSE and MODE SELECT (6/10, caching and
// control pages, nothing changeable), REPORT LUNS, REPORT SUPPORTED
// OPERATION CODES, READ DEFECT DATA (10/12), START STOP UNIT, PREVENT ALLOW
// MEDIUM REMOVAL, RESERVE and RELEASE (6/10) and PERSISTENT RESERVE IN/OUT
// (all six reservation types, kept in memory, no APTPL). Anything else is
// INVALID COMMAND OPERATION CODE. WRITE ATOMIC is not offered because a
// write is not atomic across a crash of the RAID layer. Task attributes are
// not honoured beyond SIMPLE: every command may run concurrently with every
// other.
//
// A Backend that implements Trimmer makes the logical unit thin
// provisioned: LBPME and LBPRZ in READ CAPACITY (16), LBPU, LBPWS, LBPWS10
// and LBPRZ in VPD page 0xB2, unmap limits in 0xB0, and the commands UNMAP
// (→ Trim) and GET LBA STATUS (from Mapper's Allocated, or "mapped" for
// every block without it). WRITE SAME with the UNMAP bit trims the range;
// a WRITE SAME of a zero block without it goes to Zeroer's WriteZeroes when
// the back end has one, otherwise to ordinary writes. A WRITE SAME of zero
// blocks runs to the end of the medium (WSNZ=0), up to the maximum length
// in VPD page 0xB0. READ CAPACITY (16) reports one logical block per
// physical block; the 4 KiB granularity below which the RAID layer
// reads-modify-writes is the optimal transfer length and unmap granularity
// of VPD page 0xB0.
//
// # Task management and unit attentions
//
// ABORT TASK and ABORT TASK SET abort commands of the issuing session;
// CLEAR TASK SET, LUN RESET and TARGET WARM RESET those of every session
// of the target, and TARGET COLD RESET also closes their connections. An
// aborted command gets no response (TAS=0). Unit attentions are kept per
// session (one I_T nexus; a new login starts with none), reported once
// each, oldest first, with CHECK CONDITION on the next command other than
// INQUIRY, REPORT LUNS and REQUEST SENSE, or as REQUEST SENSE data:
//
//	29h/03h BUS DEVICE RESET FUNCTION OCCURRED  LUN RESET, every session
//	29h/00h POWER ON, RESET, OR BUS DEVICE RESET OCCURRED  TARGET WARM RESET, every session
//	2Fh/00h COMMANDS CLEARED BY ANOTHER INITIATOR  CLEAR TASK SET, other sessions that lost commands
//	2Ah/09h CAPACITY DATA HAS CHANGED  the back end grew or shrank, every session
//	2Ah/03h RESERVATIONS PREEMPTED  PERSISTENT RESERVE OUT CLEAR, other registrants
//	2Ah/04h RESERVATIONS RELEASED  release of a registrants-only or all-registrants
//	        reservation, other registrants; a PREEMPT that changes the type
//	2Ah/05h REGISTRATIONS PREEMPTED  PREEMPT (AND ABORT), the preempted registrants
//
// Resets end RESERVE(6)/(10) reservations, as does the end of the session
// that holds one; persistent reservations stay. PREEMPT AND ABORT also
// aborts the commands of the preempted sessions before it completes.
//
// # Security
//
// A target may require CHAP (TargetConfig.CHAP, RFC 7143 12.1.3 and RFC
// 1994): MD5 only (CHAP_A=5); a fresh identifier and 32-byte challenge
// from crypto/rand for every login; the response compared in constant
// time; binary values accepted in hex (0x) and base64 (0b), sent in hex.
// Mutual CHAP is answered when the initiator sends CHAP_I and CHAP_C and
// the target has a mutual secret; a challenge equal to the target's own is
// refused as a reflection, and the two secrets must differ; secrets are 12
// to 255 bytes (RFC 7143 9.2.1 asks for at least 96 bits). Wrong or
// missing credentials, or an initiator that skips the security stage, end
// the login with status 0x0201 (authentication failure). An initiator name
// not on TargetConfig.AllowedInitiators ends it with 0x0202 (authorization
// failure) at the first request, before any CHAP exchange.
//
// Discovery sessions need no authentication: there is no discovery
// secret, and SendTargets, in discovery and normal sessions alike, lists
// only the targets whose allowlist admits the initiator name given at
// login. That name is the initiator's own
// claim, so an allowlist keeps out initiators that are misconfigured, not
// one that knows an allowed name; CHAP is what authenticates. UpdateTarget
// applies to logins that start afterwards; sessions already logged in
// stay.
//
// Targets served by another portal (SetRedirects) are redirected: a login
// for one ends at its first request with status 0x0101, "target moved
// temporarily" (RFC 7143 11.13.5), and TargetAddress=that portal, which
// the initiator logs in to instead; SendTargets lists them with that
// address. Both respect the target's allowlist, as its own portal does.
//
// The CHAP exchange, in login requests (I) and responses (T) of the
// security stage:
//
//	I: AuthMethod=CHAP,None       T: AuthMethod=CHAP (T bit clear)
//	I: CHAP_A=5[,...]             T: CHAP_A=5 CHAP_I=id CHAP_C=0x<32 bytes>
//	I: CHAP_N=user CHAP_R=0x<MD5(id, secret, challenge)>
//	   [CHAP_I=id2 CHAP_C=challenge2]
//	T: [CHAP_N=mutual user CHAP_R=0x<MD5(id2, mutual secret, challenge2)>],
//	   T bit as the initiator asked
//
// # Limits
//
// Every length a peer sends is checked before anything is sized from it.
// A data segment longer than the target's declared MaxRecvDataSegmentLength
// closes the connection. At most QueueDepth commands are outstanding per
// session (the CmdSN window); the data buffers they hold are bounded by
// SessionBufferBytes, and a command that would exceed it waits on its own
// worker, not in the reader. Immediate and unsolicited data are bounded
// by FirstBurstLength per command. Data-In is cut to the initiator's
// MaxRecvDataSegmentLength per PDU and MaxBurstLength per sequence;
// solicited Data-Out is requested with R2Ts of at most MaxBurstLength, at
// most MaxOutstandingR2T at a time. In the worst case a session holds
// SessionBufferBytes for commands in flight, plus QueueDepth times
// FirstBurstLength of unsolicited data waiting for that budget, plus
// QueueDepth times MaxRecvDataSegmentLength of commands received ahead of
// their CmdSN.
//
// # Errors
//
// A header digest error closes the connection. A data digest error on a
// Data-Out is answered with a Reject (reason 0x02) and the command ends,
// after its last expected Data-Out, with CHECK CONDITION, ABORTED COMMAND,
// PROTOCOL SERVICE CRC ERROR (47h/05h), never reaching the back end. Any
// other PDU that fails its data digest is rejected and discarded; if it
// held a CmdSN, the connection is closed after the Reject.
// A back-end error is a CHECK CONDITION: MEDIUM ERROR with UNRECOVERED READ
// ERROR (0x11/0x00) for reads, WRITE ERROR (0x0C/0x00) for writes and
// SYNCHRONIZE CACHE; never GOOD with stale data. A Data-Out that breaks the
// sequence rules ends its command with ABORTED COMMAND. A malformed PDU
// closes only its connection. A panic in a connection or command goroutine
// is logged and closes that connection.
//
// # Wire format
//
// All multi-byte fields are big-endian. Every PDU starts with a 48-byte
// Basic Header Segment (BHS); bytes 0-7 are common to all opcodes:
//
//	byte   0: .|I| opcode (6 bits)     I = immediate delivery
//	byte   1: F| opcode-specific flags F = final
//	bytes 2-3: opcode-specific
//	byte   4: TotalAHSLength, in 4-byte words
//	bytes 5-7: DataSegmentLength, in bytes (24 bits)
//	bytes 8-15: LUN, or opcode-specific (ISID+TSIH in login PDUs)
//	bytes 16-19: Initiator Task Tag (ITT)
//	bytes 20-47: opcode-specific
//
// The BHS is followed by the AHS (TotalAHSLength*4 bytes), then the data
// segment, padded with zeros to a multiple of 4 bytes. With
// HeaderDigest=CRC32C a 4-byte CRC32C of BHS and AHS follows the AHS; with
// DataDigest=CRC32C one of the padded data segment follows it, when the
// segment is not empty. Digests are the only little-endian fields (see
// digest.go):
//
//	| BHS (48) | AHS | [header digest] | data | pad | [data digest] |
//
// Target PDUs carry three sequence numbers at the same offsets:
//
//	bytes 24-27: StatSN     28-31: ExpCmdSN     32-35: MaxCmdSN
//
// SCSI Command (0x01), initiator to target:
//
//	 0      1            2-3      4       5-7     8-15  16-19  20-23  24-27  28-31      32-47
//	|I|0x01|F|R|W|0|0|ATTR|  -  |AHSLen|DataLen| LUN | ITT  | EDTL | CmdSN|ExpStatSN| CDB (16) |
//
// A longer CDB continues in an Extended CDB AHS:
//
//	| AHSLength (2) = CDB length - 15 | AHSType 1 | reserved | CDB bytes 16.. | pad |
//
// SCSI Response (0x21):
//
//	 1: 1|0|0|o|u|O|U|0   (o/u bidirectional, O/U residual overflow/underflow)
//	 2: Response (0 = completed at target)    3: SCSI status
//	16-19 ITT   20-23 SNACK Tag   24-35 StatSN/ExpCmdSN/MaxCmdSN
//	36-39 ExpDataSN   40-43 Bidirectional Read Residual   44-47 Residual Count
//	data: SenseLength (2) | fixed-format sense data (18 bytes)
//
// Data-In (0x25) and Data-Out (0x05):
//
//	 1: F|A|0|0|0|O|U|S   (Data-In: A, O, U, S; Data-Out: F only)
//	 3: status (Data-In with S)
//	8-15 LUN   16-19 ITT   20-23 Target Transfer Tag
//	24-27 StatSN (Data-In with S) / ExpStatSN (Data-Out)
//	28-35 ExpCmdSN/MaxCmdSN (Data-In)
//	36-39 DataSN   40-43 Buffer Offset   44-47 Residual Count (Data-In with S)
//
// R2T (0x31):
//
//	8-15 LUN   16-19 ITT   20-23 TTT   24-35 StatSN/ExpCmdSN/MaxCmdSN
//	36-39 R2TSN   40-43 Buffer Offset   44-47 Desired Data Transfer Length
//
// Login Request (0x03, always immediate) and Login Response (0x23):
//
//	 1: T|C|0|0|CSG(2)|NSG(2)   stages: 0 security, 1 operational, 3 full feature
//	 2: Version-max   3: Version-min (request) / Version-active (response)
//	8-13 ISID   14-15 TSIH   16-19 ITT
//	request:  20-21 CID   24-27 CmdSN   28-31 ExpStatSN
//	response: 24-35 StatSN/ExpCmdSN/MaxCmdSN   36 Status-Class   37 Status-Detail
//	data: key=value pairs, each terminated by a NUL byte
//
// Text Request (0x04) and Text Response (0x24):
//
//	 1: F|C|0...   8-15 LUN   16-19 ITT   20-23 TTT (0xffffffff: new exchange)
//	request: 24-27 CmdSN 28-31 ExpStatSN; response: 24-35 StatSN/ExpCmdSN/MaxCmdSN
//
// NOP-Out (0x00) and NOP-In (0x20): 8-15 LUN, 16-19 ITT, 20-23 TTT; the
// request has CmdSN and ExpStatSN at 24 and 28, the answer the three target
// sequence numbers. A ping (ITT not 0xffffffff) is answered with its data.
//
// Task Management Request (0x02): byte 1 = 1|function(7); 8-15 LUN, 16-19
// ITT, 20-23 Referenced Task Tag, 24-27 CmdSN, 28-31 ExpStatSN, 32-35
// RefCmdSN, 36-39 ExpDataSN. Response (0x22): byte 2 = response, 16-19
// ITT, 24-35 sequence numbers.
//
// Logout Request (0x06): byte 1 = 1|reason(7); 16-19 ITT, 20-21 CID, 24-27
// CmdSN, 28-31 ExpStatSN. Response (0x26): byte 2 = response, 16-19 ITT,
// 24-35 sequence numbers, 40-41 Time2Wait, 42-43 Time2Retain.
//
// Reject (0x3f): byte 2 = reason, 16-19 0xffffffff, 24-35 sequence
// numbers, 36-39 DataSN/R2TSN; data: the header of the rejected PDU.
package iscsi
