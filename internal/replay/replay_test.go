package replay

import (
	"testing"
	"time"
)

func key(i int) Key { return NewKey([32]byte{byte(i), byte(i >> 8)}, "jti") }

// TestCache: a key is new once within its window and again after it; Since
// returns the live entries from a sequence number on, across the queue's
// compactions.
func TestCache(t *testing.T) {
	c := New()
	t0 := time.Unix(1_000_000, 0)
	if !c.Add(key(0), t0.Add(time.Minute), t0) || c.Add(key(0), t0.Add(time.Minute), t0) {
		t.Fatal("a key was not new once, then seen")
	}
	if NewKey([32]byte{1}, "a") == NewKey([32]byte{1}, "b") || NewKey([32]byte{1}, "a") == NewKey([32]byte{2}, "a") {
		t.Fatal("keys of different requests are equal")
	}
	// 5000 more, each forgotten a second after the one before.
	for i := 1; i <= 5000; i++ {
		c.Add(key(i), t0.Add(time.Duration(i)*time.Second), t0)
	}
	all, next := c.Since(0, t0)
	if len(all) != 5001 || next != 5001 {
		t.Fatalf("Since(0) = %d entries, next %d; want 5001, 5001", len(all), next)
	}
	// At t0+3000s keys 0 to 2999 are gone (3000 is forgotten after its second); adding compacts.
	now := t0.Add(3000 * time.Second)
	c.Add(key(9999), now.Add(time.Minute), now)
	if c.Add(key(4000), now, now) {
		t.Fatal("a live key was new again after the queue was compacted")
	}
	if !c.Add(key(10), now.Add(time.Minute), now) {
		t.Fatal("a forgotten key was not new again")
	}
	live, next2 := c.Since(0, now)
	if next2 != next+2 {
		t.Fatalf("next = %d, want %d", next2, next+2)
	}
	if len(live) != 2001+2 || live[0].Key != key(3000) {
		t.Fatalf("after compaction Since(0) = %d entries starting %x; want 2003 (keys 3000 to 5000 and two new) starting with key 3000", len(live), live[0].Key)
	}
	since, _ := c.Since(next, now)
	if len(since) != 2 || since[0].Key != key(9999) || since[1].Key != key(10) {
		t.Fatalf("Since(%d) = %v, want the two keys added after", next, since)
	}
	if c.Len() != 2003 {
		t.Fatalf("Len = %d, want 2003", c.Len())
	}
}
