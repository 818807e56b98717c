// Package replay remembers the requests a service has seen within the skew
// window, so that a captured request is refused when sent again. Cache is
// one process's memory of them; the shared store (internal/sharedstore)
// keeps a Cache beside Redis, to fall back on and to restore Redis from.
package replay

import (
	"crypto/sha256"
	"sync"
	"time"
)

// Key names one request: 16 bytes of SHA-256(session ‖ jti), where session
// names the ticket the request was made under.
type Key [16]byte

// NewKey is the Key of the request with this jti under the session named
// by session.
func NewKey(session [32]byte, jti string) Key {
	h := sha256.New()
	h.Write(session[:])
	h.Write([]byte(jti))
	var sum [sha256.Size]byte
	var k Key
	copy(k[:], h.Sum(sum[:0]))
	return k
}

// Entry is a request seen, and when it may be forgotten.
type Entry struct {
	Key    Key
	Forget time.Time
}

// Cache holds the keys seen, in a map for lookup and in arrival order for
// expiry: at tens of thousands of requests a second the window holds
// millions, and sweeping the whole map (as a first version did) cost more
// than the rest of the check. The zero Cache is not usable; use New.
type Cache struct {
	mu    sync.Mutex
	seen  map[Key]struct{}
	queue []entry // arrival order; queue[head:] are live
	head  int
	// base is the sequence number of queue[0]: entry i of the queue is the
	// (base+i)th added since the Cache was made.
	base uint64
}

type entry struct {
	key    Key
	forget int64 // unix time after which the entry may go
}

// New returns an empty Cache.
func New() *Cache { return &Cache{seen: map[Key]struct{}{}} }

// Add records k until forget and reports whether it was new. Entries leave
// in arrival order once expired; one that expires early waits behind one
// that expires late, which keeps it longer than needed (at most the skew
// window again), never shorter.
func (c *Cache) Add(k Key, forget, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for t := now.Unix(); c.head < len(c.queue) && c.queue[c.head].forget < t; c.head++ {
		delete(c.seen, c.queue[c.head].key)
	}
	if c.head > 1024 && c.head > len(c.queue)/2 {
		c.base += uint64(c.head)
		c.queue = append(c.queue[:0], c.queue[c.head:]...)
		c.head = 0
	}
	if _, dup := c.seen[k]; dup {
		return false
	}
	c.seen[k] = struct{}{}
	c.queue = append(c.queue, entry{k, forget.Unix()})
	return true
}

// Since returns the live entries added from sequence number from on, and
// the sequence number the next entry added will have: Since(0) is every
// live entry, and Since(next) later is what was added in between.
func (c *Cache) Since(from uint64, now time.Time) (entries []Entry, next uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next = c.base + uint64(len(c.queue))
	start := c.head
	if from > c.base {
		start = max(start, int(min(from-c.base, uint64(len(c.queue)))))
	}
	t := now.Unix()
	for _, e := range c.queue[start:] {
		if e.forget >= t {
			entries = append(entries, Entry{e.key, time.Unix(e.forget, 0)})
		}
	}
	return entries, next
}

// Len is the number of keys held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
