package exchange

import (
	"container/list"
	"context"
	"crypto/sha256"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/replay"
	"github.com/custos-kx/custos/internal/ticket"
)

// ticketCache holds opened tickets so that a session's requests after the
// first cost no token operation. It is keyed by sessionKey (an authentic
// ticket opened once is authentic forever), bounded, least
// recently used first out, and forgets a session when it expires. A
// session leaving the cache is zeroed once the last request using it is
// done: requests hold their session from get (or put) to release.
type ticketCache struct {
	mu    sync.Mutex
	max   int
	items map[[32]byte]*list.Element
	lru   *list.List
}

type cacheEntry struct {
	key      [32]byte
	sealedBy ticket.KeyID // the key the ticket was sealed under
	sess     *ticket.Session
	ak       *jwc.MACKey // sess.AK prepared for the session's many MACs and its header
	lease    lease
}

// lease counts the requests holding a session's keys, which are zeroed
// once the session is retired (replaced, evicted, expired) and the last
// request has let go. The owner's mutex guards it.
type lease struct {
	users   int
	retired bool
}

func (l *lease) hold() { l.users++ }

// release ends one hold and reports whether the keys are to be zeroed now.
func (l *lease) release() bool {
	l.users--
	return l.retired && l.users == 0
}

// retire reports whether the keys are to be zeroed now.
func (l *lease) retire() bool {
	l.retired = true
	return l.users == 0
}

func (e *cacheEntry) zero() {
	e.sess.Zero()
	e.ak.Zero()
}

func newTicketCache(max int) *ticketCache {
	return &ticketCache{max: max, items: map[[32]byte]*list.Element{}, lru: list.New()}
}

// headerKey is what a session is cached under: the SHA-256 of the header
// part of its request tokens, jwc.Header(t, jwc.TypeRequest), which names
// the ticket t. A request whose header part hashes to a cached key is known
// to carry exactly that header, so its header needs no decoding, its
// ticket no hashing, and its MAC starts from the state after the header
// (see Server.session).
func headerKey(h string) [32]byte { return sha256.Sum256([]byte(h)) }

// get returns the cached session of key, held for the caller, or nil.
func (c *ticketCache) get(key [32]byte, now time.Time) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return nil
	}
	e := el.Value.(*cacheEntry)
	if now.After(e.sess.Expires) {
		c.removeLocked(el)
		return nil
	}
	c.lru.MoveToFront(el)
	e.lease.hold()
	return e
}

// put caches a session just opened, whose request tokens' header part is
// hdr (key is its headerKey), and returns it held for the caller. If
// another request cached the same ticket meanwhile, that entry is returned
// and sess is zeroed.
func (c *ticketCache) put(key [32]byte, hdr string, sealedBy ticket.KeyID, sess *ticket.Session) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		sess.Zero()
		e := el.Value.(*cacheEntry)
		e.lease.hold()
		return e
	}
	e := &cacheEntry{key: key, sealedBy: sealedBy, sess: sess, ak: jwc.NewMACKey(sess.AK[:], hdr), lease: lease{users: 1}}
	if c.max <= 0 {
		e.lease.retired = true // not cached: zeroed on release
		return e
	}
	for c.lru.Len() >= c.max {
		c.removeLocked(c.lru.Back())
	}
	c.items[key] = c.lru.PushFront(e)
	cacheStats.sessions.Add(1)
	return e
}

// release ends a request's hold on e.
func (c *ticketCache) release(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.lease.release() {
		e.zero()
	}
}

// drop takes a held entry out of the cache (its key was pruned); the
// caller still releases it.
func (c *ticketCache) drop(e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[e.key]; ok && el.Value == e {
		c.removeLocked(el)
	}
}

func (c *ticketCache) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.items, e.key)
	if e.lease.retire() {
		e.zero()
	}
	cacheStats.sessions.Add(-1)
}

// cacheStats counts the ticket caches' work in the process, for metrics.
var cacheStats struct {
	hits, misses atomic.Uint64
	sessions     atomic.Int64
}

// TicketCacheStats returns how many authenticated requests found their
// session open in memory (hits) or had the keystore open its ticket
// (misses), and how many sessions are held in memory, across every Server
// in the process.
func TicketCacheStats() (hits, misses uint64, sessions int64) {
	return cacheStats.hits.Load(), cacheStats.misses.Load(), cacheStats.sessions.Load()
}

func (c *ticketCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Replays records the requests seen within the skew window (SPEC §6: a
// jti is accepted once). The default is this process's memory, which
// refuses a replay only to the replica that saw the request;
// internal/sharedstore shares what replicas saw through Redis.
type Replays interface {
	// FirstSeen records k until forget and reports whether it was new. An
	// error means it could not tell, and the request is refused 503.
	FirstSeen(ctx context.Context, k replay.Key, forget, now time.Time) (bool, error)
}

// ErrSharedStoreUnavailable is what a Replays (or another shared store)
// wraps while it cannot be reached and refuses what it cannot check. The
// store says so in its own log, once per outage, so the requests it
// refuses meanwhile are not logged one by one.
var ErrSharedStoreUnavailable = errors.New("the shared store cannot be reached")

// memoryReplays is the default Replays.
type memoryReplays struct{ c *replay.Cache }

func (m memoryReplays) FirstSeen(_ context.Context, k replay.Key, forget, now time.Time) (bool, error) {
	return m.c.Add(k, forget, now), nil
}

// statusCache remembers, for a short while, which account each credential
// is registered to and whether that account is disabled, so that
// authenticated requests do not query the registry each time; a change
// reaches a session within its ttl.
type statusCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	entries map[string]statusEntry // by credential kid
}

type statusEntry struct {
	owner    string // "" when the credential is registered to no account
	disabled bool
	at       time.Time
}

func (c *statusCache) get(kid string, now time.Time) (statusEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[kid]
	if !ok || now.Sub(e.at) > c.ttl {
		return statusEntry{}, false
	}
	return e, true
}

func (c *statusCache) put(kid string, e statusEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) > 100_000 {
		clear(c.entries)
	}
	c.entries[kid] = e
}
