package api

import (
	"fmt"
	"time"
)

// QoS is a volume's I/O limits. The host serving the volume enforces them
// with token buckets before a command reaches the volume's sets: a command
// over a limit waits in the target, and past the host's wait cap is
// answered TASK SET FULL so that the initiator retries it. Resync and
// rebuild copies do not count against them. A zero Limit is no limit.
type QoS struct {
	IOPS      Limit `json:"iops,omitzero"`       // reads and writes together, commands a second
	ReadIOPS  Limit `json:"read_iops,omitzero"`  // reads a second
	WriteIOPS Limit `json:"write_iops,omitzero"` // writes (and trims) a second
	BPS       Limit `json:"bps,omitzero"`        // bytes a second, read and written together
	ReadBPS   Limit `json:"read_bps,omitzero"`   // bytes read a second
	WriteBPS  Limit `json:"write_bps,omitzero"`  // bytes written a second
}

// Limit is one token bucket: Rate tokens a second (commands or bytes), of
// which the bucket holds Burst. An idle volume may use its Burst at once,
// then Rate a second. A Burst of 0 in a request means one second of Rate.
type Limit struct {
	Rate  int64 `json:"rate,omitempty"`
	Burst int64 `json:"burst,omitempty"`
}

// QoSBlock is the smallest command in bytes: a byte limit's burst must
// hold at least one. A command larger than a byte limit's burst is metered
// in pieces of the burst, so it waits for all its bytes but never exceeds
// the limit.
const QoSBlock = 4096

// QoSDefaultBurst is how much of its rate a limit may use at once when no
// burst is given.
const QoSDefaultBurst = time.Second

// IsZero reports whether q limits nothing.
func (q QoS) IsZero() bool { return q == QoS{} }

// QoSLimit is one of a QoS's limits with its names.
type QoSLimit struct {
	Flag  string // the CLI flag that sets it
	Bytes bool   // a byte rate (else commands)
	Limit *Limit
}

// Limits lists q's limits in a fixed order, with the CLI flag of each.
func (q *QoS) Limits() []QoSLimit {
	return []QoSLimit{
		{"iops", false, &q.IOPS}, {"read-iops", false, &q.ReadIOPS}, {"write-iops", false, &q.WriteIOPS},
		{"bps", true, &q.BPS}, {"read-bps", true, &q.ReadBPS}, {"write-bps", true, &q.WriteBPS},
	}
}

// Normalize checks q and fills each missing burst with QoSDefaultBurst of
// its rate (at least one command, or one QoSBlock). A negative rate or
// burst, a burst without a rate, a byte rate below one QoSBlock a second
// or a burst below one command (or one QoSBlock) is a CodeInvalidArgument
// error naming the limit.
func (q *QoS) Normalize() error {
	for _, l := range q.Limits() {
		lim, unit, least := l.Limit, "commands", int64(1)
		if l.Bytes {
			unit, least = "bytes", QoSBlock
		}
		switch {
		case lim.Rate < 0 || lim.Burst < 0:
			return Errorf(CodeInvalidArgument, "qos %s: rate %d and burst %d must not be negative", l.Flag, lim.Rate, lim.Burst)
		case lim.Rate == 0 && lim.Burst != 0:
			return Errorf(CodeInvalidArgument, "qos %s: a burst of %d %s means nothing without a rate", l.Flag, lim.Burst, unit)
		case lim.Rate == 0:
			continue
		case lim.Rate < least:
			return Errorf(CodeInvalidArgument, "qos %s: a rate of %d bytes a second is below one block (%d bytes) a second", l.Flag, lim.Rate, QoSBlock)
		case lim.Burst == 0:
			lim.Burst = max(lim.Rate*int64(QoSDefaultBurst/time.Second), least)
		case lim.Burst < least:
			return Errorf(CodeInvalidArgument, "qos %s: a burst of %d %s is below one command (%d %s): no command could pass",
				l.Flag, lim.Burst, unit, least, unit)
		}
	}
	return nil
}

// String describes q in the CLI's terms, e.g. "iops 1000 (burst 2000),
// write-bps 104857600 (burst 104857600)", or "none".
func (q QoS) String() string {
	s := ""
	for _, l := range q.Limits() {
		if l.Limit.Rate == 0 {
			continue
		}
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%s %d (burst %d)", l.Flag, l.Limit.Rate, l.Limit.Burst)
	}
	if s == "" {
		return "none"
	}
	return s
}
