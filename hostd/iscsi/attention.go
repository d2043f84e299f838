package iscsi

import (
	"sync"
	"sync/atomic"
)

// Unit attention conditions (SPC-4 5.14, SAM-5 5.14) this target
// establishes, as ASC<<8 | ASCQ.
const (
	ascReset                  = 0x2900 // POWER ON, RESET, OR BUS DEVICE RESET OCCURRED: target warm reset
	ascBusDeviceReset         = 0x2903 // logical unit reset
	ascReservationsPreempted  = 0x2a03
	ascReservationsReleased   = 0x2a04
	ascRegistrationsPreempted = 0x2a05
	ascCommandsCleared        = 0x2f00 // commands cleared by another initiator
)

// maxPendingUA bounds the unit attentions queued for one I_T nexus; beyond
// it new conditions are dropped, the oldest being reported first.
const maxPendingUA = 8

// unitAttentions are the conditions pending for one I_T nexus (one
// session): each is reported once, with CHECK CONDITION, on the nexus's
// next command other than INQUIRY, REPORT LUNS and REQUEST SENSE, or as
// REQUEST SENSE data. They live as long as the session: a new login is a
// new I_T nexus and starts with none.
type unitAttentions struct {
	n  atomic.Int32 // len(mu.pending), read without the lock on every command
	mu struct {
		sync.Mutex
		pending []uint16
	}
}

// add establishes a condition unless it is already pending.
func (u *unitAttentions) add(asc uint16) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, a := range u.mu.pending {
		if a == asc {
			return
		}
	}
	if len(u.mu.pending) >= maxPendingUA {
		return
	}
	u.mu.pending = append(u.mu.pending, asc)
	u.n.Store(int32(len(u.mu.pending)))
}

// next removes and returns the oldest condition, or false when none is
// pending.
func (u *unitAttentions) next() (uint16, bool) {
	if u.n.Load() == 0 {
		return 0, false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.mu.pending) == 0 {
		return 0, false
	}
	a := u.mu.pending[0]
	u.mu.pending = append(u.mu.pending[:0], u.mu.pending[1:]...)
	u.n.Store(int32(len(u.mu.pending)))
	return a, true
}

// nexusEvent is something a command's execution asks the transport to do
// to other I_T nexuses of the logical unit: establish a unit attention,
// and with abort also abort their commands (PREEMPT AND ABORT).
type nexusEvent struct {
	nexus string
	asc   uint16
	abort bool
}
