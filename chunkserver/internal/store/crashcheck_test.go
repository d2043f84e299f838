package store

import (
	"errors"
	"testing"
)

// checkQuarantined checks that id is quarantined: Get and Create refuse it
// with ErrQuarantined, List leaves it out and Failed lists it.
func checkQuarantined(t *testing.T, s *Store, id string) {
	t.Helper()
	if _, err := s.Get(id); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("Get(%s): %v, want ErrQuarantined", id, err)
	}
	if _, err := s.Create(id, testSize); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("Create(%s): %v, want ErrQuarantined", id, err)
	}
	for _, l := range s.List() {
		if l == id {
			t.Fatalf("List includes quarantined %s", id)
		}
	}
	for _, f := range s.Failed() {
		if f.ID == id && f.Quarantined && f.Reason != nil {
			return
		}
	}
	t.Fatalf("Failed() = %v does not list %s as quarantined", s.Failed(), id)
}

// checkFailedAfterRestart checks that a chunk that failed before a restart
// is quarantined after it.
func checkFailedAfterRestart(t *testing.T, s *Store, id string) {
	t.Helper()
	checkQuarantined(t, s, id)
}
