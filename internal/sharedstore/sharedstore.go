// Package sharedstore keeps what the replicas of a service must share in
// Redis: the requests seen within the skew window, so that a replay is
// refused by every replica and not only the one that saw the request, and
// the rate limits, so that N replicas allow one rate rather than N.
//
// Each replica also remembers the requests it saw in its own memory. When
// Redis cannot be reached, the Store either refuses what it cannot check
// (fail closed, the default) or falls back on that memory and its own
// buckets (fail open), and says so in its log and metrics. When Redis
// answers again, or answers without the data it held (a restart without
// persistence), the replica writes what it remembers back before it trusts
// Redis again, so a request seen during the outage is still refused
// everywhere afterwards.
package sharedstore

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/ratelimit"
	"github.com/custos-kx/custos/internal/replay"
)

// Options tune a Store; the zero value is fail closed with the defaults.
type Options struct {
	// FailOpen makes the Store fall back on this replica's memory while
	// Redis cannot be reached, instead of refusing requests.
	FailOpen bool
	// Timeout bounds each Redis command (default 250 ms): a request waits
	// at most this long for Redis before the failure mode applies (a
	// replay check, up to four times as long: the batch ahead of its
	// own and its own, each sent twice; see checkBatches).
	Timeout time.Duration
	// ProbeInterval is how often Redis is checked for having come back,
	// or having lost its data (default 500 ms).
	ProbeInterval time.Duration
	// RootCAs, if set, are the authorities a rediss:// server's
	// certificate must chain to (default: the system's).
	RootCAs *x509.CertPool
	Logger  *slog.Logger
	Now     func() time.Time
}

// ErrUnavailable is returned, when failing closed, while Redis cannot be
// reached.
var ErrUnavailable = fmt.Errorf("%w: Redis does not answer", exchange.ErrSharedStoreUnavailable)

// Store is a connection to the shared Redis, with this replica's memory
// beside it. Close stops it.
type Store struct {
	opts  Options
	where string // the server, for logs; never the password
	// The requests seen go through rueidis on one connection, in
	// batches (checkBatches): measured here (make bench-replicas),
	// go-redis's round trip per SET on a pooled connection cost 33–43 %
	// of the authenticated requests' throughput, rueidis's pipelining
	// 11–26 % on a machine it shares with Redis and the load. The rate
	// limits, a few per exchange, go through redis_rate on go-redis.
	seen    rueidis.Client
	rdb     *redis.Client
	limiter *redis_rate.Limiter
	local   *replay.Cache
	batches checkBatches // of the replay checks
	up      atomic.Bool
	mark    string // a key of this replica's, whose absence says Redis lost its data
	probing sync.Mutex
	stop    context.CancelFunc
	done    chan struct{}
}

// Key prefixes: every key the Store writes starts with "custos:".
const (
	replayPrefix = "custos:seen:"
	markPrefix   = "custos:replica:"
	// redis_rate prefixes its own keys with "rate:".
	limitPrefix = "custos:"
)

// Open connects to the Redis at rawURL: redis://[user:password@]host:port[/db],
// rediss://… for TLS, or unix:///path/to/socket. It fails if Redis does
// not answer now, so that a wrong address is found at start, not by the
// first client.
func Open(ctx context.Context, rawURL string, opts Options) (*Store, error) {
	ro, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("the shared store %q is not a redis://, rediss:// or unix:// URL: %w", redact(rawURL), err)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 250 * time.Millisecond
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 500 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout = 4*opts.Timeout, opts.Timeout, opts.Timeout
	if ro.TLSConfig != nil && opts.RootCAs != nil {
		ro.TLSConfig.RootCAs = opts.RootCAs
	}
	// No retries: a SET NX retried after its answer was lost would find
	// its own key and refuse a fresh request as a replay, and a rate limit
	// retried would count twice. A failure is handled once, by the mode.
	ro.MaxRetries = -1
	ro.DisableIdentity = true
	ro.ContextTimeoutEnabled = true
	var id [8]byte
	rand.Read(id[:])
	s := &Store{
		opts:  opts,
		where: ro.Network + " " + ro.Addr,
		rdb:   redis.NewClient(ro),
		local: replay.New(),
		mark:  markPrefix + hex.EncodeToString(id[:]),
		done:  make(chan struct{}),
	}
	s.limiter = redis_rate.NewLimiter(s.rdb)
	copt, err := rueidis.ParseURL(rawURL)
	if err != nil {
		s.rdb.Close()
		return nil, fmt.Errorf("the shared store %q is not a redis://, rediss:// or unix:// URL: %w", redact(rawURL), err)
	}
	copt.DisableCache, copt.DisableRetry = true, true
	if copt.TLSConfig != nil && opts.RootCAs != nil {
		copt.TLSConfig.RootCAs = opts.RootCAs
	}
	copt.ConnWriteTimeout = opts.Timeout
	copt.Dialer.Timeout = 4 * opts.Timeout
	// One connection, so that the probe that finds Redis answering has
	// found the connection the requests use answering.
	copt.PipelineMultiplex = -1
	copt.ClientSetInfo = rueidis.DisableClientSetInfo
	if s.seen, err = rueidis.NewClient(copt); err != nil {
		s.rdb.Close()
		return nil, fmt.Errorf("the shared store (Redis at %s) does not answer: %w", s.where, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 4*opts.Timeout)
	defer cancel()
	if err := s.probe(pctx); err != nil {
		s.seen.Close()
		s.rdb.Close()
		return nil, fmt.Errorf("the shared store (Redis at %s) does not answer: %w", s.where, err)
	}
	bg, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.watch(bg)
	return s, nil
}

// redact drops the password from a Redis URL, for error messages.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Close stops the Store's probes and closes its connections.
func (s *Store) Close() error {
	s.stop()
	<-s.done
	s.seen.Close()
	return s.rdb.Close()
}

// Up reports whether Redis is being used: it answered the last command
// and holds everything this replica remembers.
func (s *Store) Up() bool { return s.up.Load() }

// FailOpen reports the Store's failure mode.
func (s *Store) FailOpen() bool { return s.opts.FailOpen }

// Ready is nil while the Store can check requests: Redis is up, or the
// Store fails open.
func (s *Store) Ready(context.Context) error {
	if s.up.Load() || s.opts.FailOpen {
		return nil
	}
	return ErrUnavailable
}

// FirstSeen records the request k until forget and reports whether no
// replica had seen it: one SET NX with expiry in Redis, after this
// replica's own memory, sent with the other checks of its moment
// (checkBatches).
func (s *Store) FirstSeen(ctx context.Context, k replay.Key, forget, now time.Time) (bool, error) {
	if !s.local.Add(k, forget, now) {
		return false, nil
	}
	if !s.up.Load() {
		return s.fallback()
	}
	b, i, sends := s.batches.join(check{key: k, forget: forget})
	if sends {
		// The other checks of the batch wait on it: it is sent even if
		// this request has ended.
		s.batches.take(b)
		func() {
			defer s.batches.finish(b) // whatever happens, the next batch gets its turn
			s.send(b)
		}()
	} else {
		select {
		case <-b.done:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	switch c := b.checks[i]; {
	case c.err == nil:
		return c.first, nil
	case ctx.Err() != nil:
		return false, ctx.Err() // the request itself ended: not Redis's fault
	}
	return s.fallback()
}

// fallback is the answer, to a request this replica has not seen, while
// Redis cannot be reached: new when failing open, else ErrUnavailable.
func (s *Store) fallback() (bool, error) {
	if s.opts.FailOpen {
		return true, nil
	}
	return false, ErrUnavailable
}

// lost marks Redis unreachable, saying so once.
func (s *Store) lost(err error) {
	if s.up.Swap(false) {
		storeUp.Set(0)
		storeFailures.Inc()
		if s.opts.FailOpen {
			s.opts.Logger.Error("shared store unreachable: replays and rate limits are checked by this replica alone until it answers (--shared-store-failure=open)", "redis", s.where, "error", err)
		} else {
			s.opts.Logger.Error("shared store unreachable: authenticated requests, exchanges and rekeys are refused 503 until it answers (--shared-store-failure=closed)", "redis", s.where, "error", err)
		}
	}
}

// watch probes Redis every ProbeInterval until Close.
func (s *Store) watch(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(s.opts.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 4*s.opts.Timeout)
		if err := s.probe(pctx); err != nil && ctx.Err() == nil {
			s.lost(err)
		}
		cancel()
	}
}

// probe refreshes this replica's mark in Redis. Redis that lacks the mark
// lost what it held (or this replica is new), and Redis coming back after
// an outage has missed what was seen meanwhile: either way the requests
// this replica remembers are written back before it is trusted again.
func (s *Store) probe(ctx context.Context) error {
	s.probing.Lock()
	defer s.probing.Unlock()
	err := s.seen.Do(ctx, s.seen.B().Set().Key(s.mark).Value("1").Get().Ex(10*time.Minute).Build()).Error()
	missing := rueidis.IsRedisNil(err)
	if err != nil && !missing {
		return err
	}
	wasUp := s.up.Load()
	if wasUp && !missing {
		return nil
	}
	// Once while requests still go by memory alone, then, once they go
	// to Redis again, for what arrived during the first pass.
	entries, next := s.local.Since(0, s.opts.Now())
	if err := s.restore(ctx, entries); err != nil {
		return err
	}
	if !wasUp {
		s.up.Store(true)
		storeUp.Set(1)
		entries, _ = s.local.Since(next, s.opts.Now())
		if err := s.restore(ctx, entries); err != nil {
			return err
		}
		s.opts.Logger.Info("shared store answering", "redis", s.where, "requests_restored", next, "had_lost_its_data", missing)
	} else {
		s.opts.Logger.Warn("shared store had lost what it held; this replica restored what it remembers", "redis", s.where, "requests", next)
	}
	return nil
}

// restore writes entries to Redis, each only if absent, in pipelines of a
// thousand.
func (s *Store) restore(ctx context.Context, entries []replay.Entry) error {
	for len(entries) > 0 {
		n := min(len(entries), 1000)
		cmds := make(rueidis.Commands, n)
		for i, e := range entries[:n] {
			cmds[i] = s.seen.B().Set().Key(replayPrefix + string(e.Key[:])).Value("1").Nx().Exat(e.Forget).Build()
		}
		for _, r := range s.seen.DoMulti(ctx, cmds...) {
			if err := r.Error(); err != nil && !rueidis.IsRedisNil(err) {
				return err
			}
		}
		restored.Add(float64(n))
		entries = entries[n:]
	}
	return nil
}

// Limiter returns the shared rate limit named name, of perSecond tokens a
// second with bursts of burst, kept per key in Redis (GCRA, by
// redis_rate) and, while Redis cannot be reached and the Store fails open,
// in this replica's memory.
func (s *Store) Limiter(name string, perSecond float64, burst int) *Limiter {
	return &Limiter{
		s:    s,
		name: name + ":",
		// One token every 1/perSecond seconds: redis_rate counts whole
		// tokens per period, and a rate below one a second is common.
		limit: redis_rate.Limit{Rate: 1, Period: time.Duration(float64(time.Second) / perSecond), Burst: burst},
		local: ratelimit.New(perSecond, burst),
	}
}

// Limiter is one shared rate limit.
type Limiter struct {
	s     *Store
	name  string
	limit redis_rate.Limit
	local *ratelimit.Buckets
}

// Allow takes a token for key, or says how long until one is available.
func (l *Limiter) Allow(ctx context.Context, key string) (bool, time.Duration, error) {
	return l.take(ctx, key, 1)
}

// Peek says whether key has a token, without taking it.
func (l *Limiter) Peek(ctx context.Context, key string) (bool, time.Duration, error) {
	return l.take(ctx, key, 0)
}

func (l *Limiter) take(ctx context.Context, key string, n int) (bool, time.Duration, error) {
	if l.s.up.Load() {
		rctx, cancel := context.WithTimeout(ctx, l.s.opts.Timeout)
		res, err := l.s.limiter.AllowN(rctx, limitPrefix+l.name+key, l.limit, n)
		cancel()
		if err == nil {
			if n == 0 {
				// Remaining counts whole tokens left, without taking one.
				return res.Remaining >= 1, l.limit.Period, nil
			}
			return res.Allowed >= 1, max(res.RetryAfter, 0), nil
		}
		if ctx.Err() != nil {
			return false, 0, ctx.Err()
		}
		l.s.lost(err)
	}
	if !l.s.opts.FailOpen {
		return false, 0, ErrUnavailable
	}
	now := l.s.opts.Now()
	if n == 0 {
		ok, retry := l.local.Peek(key, now)
		return ok, retry, nil
	}
	ok, retry := l.local.Allow(key, now)
	return ok, retry, nil
}
