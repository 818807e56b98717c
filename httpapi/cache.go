package httpapi

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/custos-kx/custos/exchange/ticket"
)

// ticketCache holds opened tickets so that a session's requests after the
// first cost no token operation. It is keyed by a hash of the ticket (an
// authentic ticket opened once is authentic forever), bounded, least
// recently used first out, and forgets a session when it expires.
type ticketCache struct {
	mu    sync.Mutex
	max   int
	items map[[32]byte]*list.Element
	lru   *list.List
}

type cacheEntry struct {
	key  [32]byte
	sess *ticket.Session
}

func newTicketCache(max int) *ticketCache {
	return &ticketCache{max: max, items: map[[32]byte]*list.Element{}, lru: list.New()}
}

func ticketKey(t []byte) [32]byte { return sha256.Sum256(t) }

func (c *ticketCache) get(key [32]byte, now time.Time) *ticket.Session {
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
	return e.sess
}

func (c *ticketCache) put(key [32]byte, sess *ticket.Session) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[key]; ok {
		return
	}
	for c.lru.Len() >= c.max {
		c.removeLocked(c.lru.Back())
	}
	c.items[key] = c.lru.PushFront(&cacheEntry{key: key, sess: sess})
	ticketCacheSessions.Inc()
}

func (c *ticketCache) removeLocked(el *list.Element) {
	e := c.lru.Remove(el).(*cacheEntry)
	delete(c.items, e.key)
	e.sess.Zero()
	ticketCacheSessions.Dec()
}

func (c *ticketCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// replayCache remembers the jti of every request within the skew window, so
// a captured request cannot be sent again while its iat is still accepted.
type replayCache struct {
	mu      sync.Mutex
	seen    map[replayKey]int64 // unix time after which the entry may go
	inserts int
}

type replayKey struct {
	ticket [32]byte
	jti    string
}

func newReplayCache() *replayCache { return &replayCache{seen: map[replayKey]int64{}} }

// add records a request and reports whether it was new.
func (c *replayCache) add(k replayKey, forget time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.seen[k]; dup {
		return false
	}
	c.seen[k] = forget.Unix()
	if c.inserts++; c.inserts%1024 == 0 {
		c.sweepLocked(time.Now().Unix())
	}
	return true
}

func (c *replayCache) sweepLocked(now int64) {
	for k, until := range c.seen {
		if until < now {
			delete(c.seen, k)
		}
	}
}

// statusCache remembers whether accounts are disabled for a short while, so
// authenticated requests do not query the registry each time; a disabled
// account's sessions stop within statusTTL.
type statusCache struct {
	mu      sync.Mutex
	ttl     time.Duration
	entries map[string]statusEntry
}

type statusEntry struct {
	disabled bool
	at       time.Time
}

func (c *statusCache) get(account string, now time.Time) (disabled, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[account]
	if !ok || now.Sub(e.at) > c.ttl {
		return false, false
	}
	return e.disabled, true
}

func (c *statusCache) put(account string, disabled bool, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) > 100_000 {
		clear(c.entries)
	}
	c.entries[account] = statusEntry{disabled, now}
}
