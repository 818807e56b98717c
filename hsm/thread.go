package hsm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/custos-kx/custos/exchange"
)

// callThreads make a software token's calls on OS threads of their own,
// each thread one call after another, in the order they were asked for.
//
// A software token computes in the calling thread and guards its state
// with locks. Called from the goroutines of the requests, its calls ran
// side by side on every thread the Go scheduler had and met on those
// locks, and each call, a cgo call, made the scheduler hand its processor
// to another thread and find it one again afterwards. Measured, P-256
// exchanges at concurrency 32 on 2 CPUs with SoftHSM: with the calls on
// the callers' goroutines, 3,705–3,735 exchanges a second at 0.44–0.45 ms
// of CPU each (with GOMAXPROCS 5, the best that had); on one thread of
// their own, 4,208–4,403 at 0.32–0.34 ms; on two, 3,736–3,798 at
// 0.40–0.41 ms (docs/performance.md).
type callThreads struct {
	calls chan *call
	stop  chan struct{} // closed by Token.Close
}

// call is one call waiting for a thread, and then its outcome.
type call struct {
	f      func() error
	err    error
	panic  *threadPanic // what f panicked with, passed on to its caller
	goexit bool         // f ended its goroutine (runtime.Goexit, as t.Fatal does)
	done   chan struct{}
}

// threadPanic is a panic of an operation on a call thread, raised again in
// its caller with the stack where it happened, which the caller's own
// stack does not show.
type threadPanic struct {
	value any
	stack []byte
}

func (p *threadPanic) Error() string {
	return fmt.Sprintf("%v\n\n[on the token's call thread]\n%s", p.value, p.stack)
}

// Unwrap returns the panic's value if it is an error.
func (p *threadPanic) Unwrap() error {
	err, _ := p.value.(error)
	return err
}

func startCallThreads(n int) *callThreads {
	c := &callThreads{calls: make(chan *call), stop: make(chan struct{})}
	for range n {
		go c.serve()
	}
	return c
}

func (c *callThreads) serve() {
	// The thread stays this goroutine's alone: the token's code and data
	// stay in one CPU's caches, and no other goroutine's work comes
	// between two calls.
	runtime.LockOSThread()
	for {
		select {
		case <-c.stop:
			return
		case k := <-c.calls:
			c.run(k)
		}
	}
}

// run makes k's call. A call that ends its goroutine ends this thread's
// too, so another thread takes its place.
func (c *callThreads) run(k *call) {
	returned := false
	defer func() {
		if !returned {
			if r := recover(); r != nil {
				k.panic = &threadPanic{value: r, stack: debug.Stack()}
			} else {
				k.goexit = true
				go c.serve()
			}
		}
		close(k.done)
	}()
	k.err = k.f()
	returned = true
}

// errClosed answers calls made after Token.Close.
var errClosed = errors.New("closed")

// do runs f on one of the threads once one is free, and returns what f
// returned. A caller whose context ends before a thread takes its call
// gives up; once taken, the call is waited for, since f may still be
// writing what the caller will read.
func (c *callThreads) do(ctx context.Context, f func() error) error {
	k := &call{f: f, done: make(chan struct{})}
	select {
	case c.calls <- k:
	case <-ctx.Done():
		return fmt.Errorf("%w: the token's thread was not free in time: %w", exchange.ErrKeystoreUnavailable, ctx.Err())
	case <-c.stop:
		return unavailable(errClosed)
	}
	<-k.done
	switch {
	case k.panic != nil:
		panic(k.panic)
	case k.goexit:
		runtime.Goexit()
	}
	return k.err
}
