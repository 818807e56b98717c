package exchange

import (
	"context"
	"runtime"
)

// cpuSlots bound the exchanges computing in Go at once to the processors
// Go runs on. Exchanges waiting on the token hold no slot, so a slow
// network HSM can have many exchanges in flight; exchanges that compute
// hold one each, so that at most one CPU-bound exchange is ahead of an
// authenticated request on any processor. Without the bound, sixteen
// exchanges computing on two processors kept requests waiting 40–70 ms
// behind them (TestExchangeFloodDoesNotStarveRequests).
type cpuSlots chan struct{}

// newCPUSlots makes n slots, or GOMAXPROCS if n is not positive.
func newCPUSlots(n int) cpuSlots {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	return make(cpuSlots, n)
}

// run runs f in a slot, once one is free.
func (c cpuSlots) run(ctx context.Context, f func() error) error {
	select {
	case c <- struct{}{}:
	case <-ctx.Done():
		return Errorf(KeystoreUnavailable, "The request ended while waiting for its turn.")
	}
	defer func() { <-c }()
	return f()
}
