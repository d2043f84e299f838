// Package budget checks the timeout budget of a cluster (DESIGN §5, rule 1
// of §2): t_io < offline_after < SCSI command timeout < T, and T ≥ 3·t_io,
// on which the REMB theorems rest. The metaserver checks its configuration
// with it at start, and the daemons check the cluster's values they are
// given. It depends only on the standard library.
package budget

import (
	"errors"
	"fmt"
	"time"
)

// Validate checks the part of the timeout budget (DESIGN §5) that the
// REMB theorems rest on:
//
//   - tIO, the time after which hostd fails a member whose request has not
//     completed, is positive and shorter than offlineAfter, the heartbeat
//     loss after which a server is declared offline;
//   - T, the LOG rotation period, is at least 3×tIO (DESIGN rule 1): a
//     write arrives at a member within tIO of being sent, the host needs
//     up to tIO more to notice that another member missed it, and up to
//     tIO more to pin the survivors' LOG bitmaps; a bit lives at least T
//     after it was set, so it is still there when the pin arrives;
//   - T exceeds offlineAfter, as the hierarchy t_io < offline_after <
//     SCSI timeout < T requires.
//
// It returns nil or every broken rule, each a *Error (errors.Is ErrBudget),
// joined.
func Validate(tIO, offlineAfter, T time.Duration) error {
	var errs []error
	add := func(rule, format string, args ...any) {
		errs = append(errs, &Error{Rule: rule, Msg: fmt.Sprintf(format, args...)})
	}
	if tIO <= 0 {
		add("t_io > 0", "member request timeout t_io=%v must be positive", tIO)
	}
	if offlineAfter <= 0 {
		add("offline_after > 0", "offline_after=%v must be positive", offlineAfter)
	}
	if T <= 0 {
		add("T > 0", "LOG rotation period T=%v must be positive", T)
	}
	if tIO > 0 && offlineAfter > 0 && tIO >= offlineAfter {
		add("t_io < offline_after",
			"member request timeout t_io=%v must be less than offline_after=%v (DESIGN §5: a slow member is failed by its host before its server is declared offline)",
			tIO, offlineAfter)
	}
	if tIO > 0 && T > 0 && T/3 < tIO {
		add("T >= 3*t_io",
			"LOG rotation period T=%v must be at least 3×t_io=%v (DESIGN rule 1: bounded in-flight time)",
			T, 3*tIO)
	}
	if offlineAfter > 0 && T > 0 && T <= offlineAfter {
		add("T > offline_after",
			"LOG rotation period T=%v must exceed offline_after=%v (DESIGN §5: t_io < offline_after < SCSI timeout < T)",
			T, offlineAfter)
	}
	return errors.Join(errs...)
}

// ErrBudget reports a timeout configuration that breaks the rules the
// theorems need.
var ErrBudget = errors.New("timeout budget violated")

// Error names the rule of the timeout budget that a configuration breaks.
// It unwraps to ErrBudget.
type Error struct {
	Rule string // short name of the rule, e.g. "T >= 3*t_io"
	Msg  string // the whole sentence, with the values
}

func (e *Error) Error() string { return e.Msg }

func (e *Error) Unwrap() error { return ErrBudget }

// ValidateHostFailover checks where host_failover_after sits in the budget:
// a host is declared offline (offline_after) before its volumes move, so a
// host that misses a heartbeat or two keeps them. Failover should also end
// well within the initiators' session recovery time (open-iscsi's
// replacement_timeout, 120 s by default), which no daemon can see.
func ValidateHostFailover(offlineAfter, failoverAfter time.Duration) error {
	if failoverAfter <= offlineAfter {
		return &Error{Rule: "offline_after < host_failover_after",
			Msg: fmt.Sprintf("host_failover_after=%v must exceed offline_after=%v (DESIGN §5: a host is offline before its volumes move to another)", failoverAfter, offlineAfter)}
	}
	return nil
}
