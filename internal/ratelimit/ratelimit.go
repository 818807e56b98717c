// Package ratelimit keeps token buckets per key in memory: the rate limits
// of one process, and what the shared store falls back on when Redis
// cannot be reached.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Buckets holds one token bucket per key, forgetting buckets that have
// been idle long enough to be full again.
type Buckets struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*bucket
	swept time.Time
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// New returns Buckets of perSecond tokens a second and bursts of burst.
func New(perSecond float64, burst int) *Buckets {
	return &Buckets{rate: rate.Limit(perSecond), burst: burst, m: map[string]*bucket{}}
}

// Allow takes a token for key, or says how long until one is available.
func (b *Buckets) Allow(key string, now time.Time) (ok bool, retry time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.Sub(b.swept) > time.Minute {
		full := time.Duration(float64(b.burst)/float64(b.rate)*float64(time.Second)) + time.Second
		for k, e := range b.m {
			if now.Sub(e.seen) > full {
				delete(b.m, k)
			}
		}
		b.swept = now
	}
	e := b.m[key]
	if e == nil {
		e = &bucket{lim: rate.NewLimiter(b.rate, b.burst)}
		b.m[key] = e
	}
	e.seen = now
	r := e.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// Peek says whether key has a token, without taking it.
func (b *Buckets) Peek(key string, now time.Time) (ok bool, retry time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.m[key]
	if e == nil {
		return true, 0
	}
	r := e.lim.ReserveN(now, 1)
	d := r.DelayFrom(now)
	r.CancelAt(now)
	return d <= 0, d
}
