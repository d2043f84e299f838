//go:build race

package iscsi

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// allocation counts run higher.
const raceEnabled = true
