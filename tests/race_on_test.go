//go:build race

package tests

// raceEnabled: the race detector slows and reorders scheduling, so tests
// that measure latency only assert it without it (make test runs them
// both ways).
const raceEnabled = true
