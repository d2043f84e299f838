package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// SCSI status codes (SAM-5).
const (
	statusGood                = 0x00
	statusCheckCondition      = 0x02
	statusBusy                = 0x08
	statusReservationConflict = 0x18
	statusTaskSetFull         = 0x28
	statusTaskAborted         = 0x40
)

// Sense keys (SPC-4 table 48).
const (
	senseNoSense        = 0x0
	senseNotReady       = 0x2
	senseMediumError    = 0x3
	senseHardwareError  = 0x4
	senseIllegalRequest = 0x5
	senseUnitAttention  = 0x6
	senseDataProtect    = 0x7
	senseAbortedCommand = 0xb
	senseMiscompare     = 0xe
)

// Additional sense codes, ASC in the high byte and ASCQ in the low byte.
const (
	ascNone                    = 0x0000
	ascLUNotReadyManual        = 0x0403 // LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED
	ascLUBecomingReady         = 0x0401 // LOGICAL UNIT IS IN PROCESS OF BECOMING READY
	ascWriteError              = 0x0c00
	ascInvalidFieldInIU        = 0x0e03
	ascUnrecoveredReadError    = 0x1100
	ascParamListLengthError    = 0x1a00
	ascMiscompareDuringVerify  = 0x1d00
	ascInvalidOpcode           = 0x2000
	ascLBAOutOfRange           = 0x2100
	ascInvalidFieldInCDB       = 0x2400
	ascLUNotSupported          = 0x2500
	ascInvalidFieldInParamList = 0x2600
	ascInvalidReleaseOfPR      = 0x2604
	ascWriteProtected          = 0x2700 // WRITE PROTECTED
	ascSpaceAllocFailed        = 0x2707 // SPACE ALLOCATION FAILED WRITE PROTECT (SBC-4)
	ascCapacityChanged         = 0x2a09
	ascCommandTimeout          = 0x2e02 // COMMAND TIMEOUT DURING PROCESSING (SPC-5)
	ascSavingParamsUnsupported = 0x3900
	ascInternalTargetFailure   = 0x4400
	ascProtocolCRCError        = 0x4705 // PROTOCOL SERVICE CRC ERROR (RFC 7143 11.4.7.2)
	ascDataPhaseError          = 0x4b00
	ascInvalidTTT              = 0x4b01
	ascTooMuchWriteData        = 0x4b02
	ascDataOffsetError         = 0x4b05
)

// sense is the sense data of a CHECK CONDITION, sent in fixed format
// (response code 0x70, 18 bytes).
type sense struct {
	key  uint8
	asc  uint16 // ASC<<8 | ASCQ
	info uint64 // INFORMATION field, valid when hasInfo
	// field pointer of INVALID FIELD IN CDB / PARAMETER LIST
	hasField bool
	cdb      bool // field is in the CDB (C/D bit) rather than the data
	byteOff  uint16
	bit      int8 // -1: whole byte
	hasInfo  bool
}

func (s *sense) Error() string {
	return fmt.Sprintf("sense key 0x%x asc/ascq 0x%04x", s.key, s.asc)
}

// senseLen is the length of fixed-format sense data with the additional
// sense length byte set to 10.
const senseLen = 18

// marshal writes fixed-format sense data (SPC-4 4.5.3).
//
//	byte 0    VALID(7) | RESPONSE CODE 0x70
//	byte 2    SENSE KEY (low nibble)
//	bytes 3-6 INFORMATION
//	byte 7    ADDITIONAL SENSE LENGTH (10)
//	byte 12   ADDITIONAL SENSE CODE
//	byte 13   ADDITIONAL SENSE CODE QUALIFIER
//	bytes 15-17 SENSE KEY SPECIFIC: SKSV | C/D | BPV | bit pointer, field pointer
func (s *sense) marshal() []byte {
	b := make([]byte, senseLen)
	b[0] = 0x70
	if s.hasInfo && s.info <= 0xffffffff {
		b[0] |= 0x80
		put32(b[3:], uint32(s.info))
	}
	b[2] = s.key & 0x0f
	b[7] = senseLen - 8
	b[12] = byte(s.asc >> 8)
	b[13] = byte(s.asc)
	if s.hasField {
		b[15] = 0x80
		if s.cdb {
			b[15] |= 0x40
		}
		if s.bit >= 0 {
			b[15] |= 0x08 | byte(s.bit)&7
		}
		put16(b[16:], s.byteOff)
	}
	return b
}

func newSense(key uint8, asc uint16) *sense { return &sense{key: key, asc: asc, bit: -1} }

// invalidField is ILLEGAL REQUEST, INVALID FIELD IN CDB pointing at the given
// CDB byte (and bit, or -1 for the whole byte).
func invalidField(byteOff int, bit int) *sense {
	return &sense{key: senseIllegalRequest, asc: ascInvalidFieldInCDB, hasField: true, cdb: true, byteOff: uint16(byteOff), bit: int8(bit)}
}

// invalidParam is ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST.
func invalidParam(byteOff int, bit int) *sense {
	return &sense{key: senseIllegalRequest, asc: ascInvalidFieldInParamList, hasField: true, byteOff: uint16(byteOff), bit: int8(bit)}
}

var (
	senseInvalidOpcode  = newSense(senseIllegalRequest, ascInvalidOpcode)
	senseLBAOutOfRange  = newSense(senseIllegalRequest, ascLBAOutOfRange)
	senseLUNotSupported = newSense(senseIllegalRequest, ascLUNotSupported)
	senseReadError      = newSense(senseMediumError, ascUnrecoveredReadError)
	senseWriteError     = newSense(senseMediumError, ascWriteError)
	senseInvalidIU      = newSense(senseIllegalRequest, ascInvalidFieldInIU)
	senseSavingParams   = newSense(senseIllegalRequest, ascSavingParamsUnsupported)
	senseParamLength    = newSense(senseIllegalRequest, ascParamListLengthError)
	senseWriteProtected = newSense(senseDataProtect, ascWriteProtected)
)

// The classes of back-end errors the target tells apart. A Backend's error
// says which class it is by wrapping one of these (errors.Is); any other
// error is a medium error. The back end's own errors stay behind them: the
// target imports no back end.
var (
	// ErrNotReady: the logical unit cannot serve until something is
	// repaired (a RAID set lost its quorum). An initiator should not retry
	// the command as a medium error of one block.
	ErrNotReady = errors.New("iscsi: logical unit not ready")
	// ErrBecomingReady: the command did not complete but the same command
	// may succeed soon (a degradation could not be recorded in time).
	ErrBecomingReady = errors.New("iscsi: logical unit becoming ready")
	// ErrLBAOutOfRange: the command reached beyond the end of the back end.
	ErrLBAOutOfRange = errors.New("iscsi: LBA out of range")
	// ErrNoSpace: the back end had no space to store a write; nothing
	// changed, and the write may succeed once space is freed.
	ErrNoSpace = errors.New("iscsi: no space to store the write")
	// ErrBusy: the back end will not take the command now (a volume over
	// its I/O limits); nothing was done, and the initiator should retry it.
	// The command is answered TASK SET FULL status, without sense data.
	ErrBusy = errors.New("iscsi: logical unit busy")
)

// backendSense is the one mapping from an error of the back end to the
// sense data the initiator gets:
//   - ErrBecomingReady: NOT READY, LOGICAL UNIT IS IN PROCESS OF BECOMING
//     READY (04h/01h), which initiators retry;
//   - ErrNotReady: NOT READY, LOGICAL UNIT NOT READY, MANUAL INTERVENTION
//     REQUIRED (04h/03h);
//   - ErrLBAOutOfRange: ILLEGAL REQUEST, LBA OUT OF RANGE (21h/00h);
//   - ErrNoSpace: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT
//     (27h/07h), the thin-provisioning answer to a pool out of space
//     (SBC-4 4.7.3.7), which Linux and libiscsi turn into ENOSPC;
//   - the command's deadline: ABORTED COMMAND, COMMAND TIMEOUT DURING
//     PROCESSING (2Eh/02h); its cancellation (task abort, logout): ABORTED
//     COMMAND without additional sense. Both may be retried;
//   - anything else: MEDIUM ERROR, UNRECOVERED READ ERROR (11h/00h) for a
//     read, WRITE ERROR (0Ch/00h) for a write.
func backendSense(err error, write bool) *sense {
	switch {
	case errors.Is(err, ErrBecomingReady):
		return newSense(senseNotReady, ascLUBecomingReady)
	case errors.Is(err, ErrNotReady):
		return newSense(senseNotReady, ascLUNotReadyManual)
	case errors.Is(err, ErrLBAOutOfRange):
		return senseLBAOutOfRange
	case errors.Is(err, ErrNoSpace):
		return newSense(senseDataProtect, ascSpaceAllocFailed)
	case errors.Is(err, context.DeadlineExceeded):
		return newSense(senseAbortedCommand, ascCommandTimeout)
	case errors.Is(err, context.Canceled):
		return newSense(senseAbortedCommand, ascNone)
	case write:
		return senseWriteError
	default:
		return senseReadError
	}
}

// ioErrorKey is what makes two back-end errors the same for the log.
type ioErrorKey struct {
	lba   uint64
	write bool
	key   uint8
	asc   uint16
	cause string
}

// ioError answers a command whose back-end call failed with err, at lba
// (0 when the command has none). The cause is logged with the target and
// LBA once: a repeat of the same failure at the same LBA, as an initiator
// retrying the command sends, is logged at debug level only.
func (lu *logicalUnit) ioError(err error, lba uint64, write bool) result {
	if errors.Is(err, ErrBusy) {
		if lu.log != nil {
			lu.log.Debug("back end busy: TASK SET FULL", "lba", lba, "write", write, "err", err)
		}
		return result{status: statusTaskSetFull}
	}
	s := backendSense(err, write)
	if lu.log != nil {
		k := &ioErrorKey{lba: lba, write: write, key: s.key, asc: s.asc, cause: err.Error()}
		level := slog.LevelWarn
		if last := lu.lastIOError.Swap(k); last != nil && *last == *k {
			level = slog.LevelDebug
		}
		lu.log.Log(context.Background(), level, "back-end I/O failed", "lba", lba, "write", write,
			"sense_key", s.key, "asc", fmt.Sprintf("%04x", s.asc), "err", err)
	}
	return check(s)
}
