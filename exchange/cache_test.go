package exchange

import (
	"testing"
	"time"

	"github.com/custos-kx/custos/internal/ticket"
)

func session(b byte) *ticket.Session {
	s := &ticket.Session{Expires: time.Now().Add(time.Hour)}
	s.AK[0], s.EK[0], s.RK[0] = b, b, b
	return s
}

// TestTicketCacheZeroesOnlyUnheldSessions checks that a session leaving
// the cache — evicted or expired — keeps its keys while a request holds
// it, and loses them when the last one lets go.
func TestTicketCacheZeroesOnlyUnheldSessions(t *testing.T) {
	c := newTicketCache(1)
	a := c.put([32]byte{1}, "", ticket.KeyID{}, session(1)) // held by a request
	b := c.put([32]byte{2}, "", ticket.KeyID{}, session(2)) // evicts a
	if a.sess.AK[0] != 1 {
		t.Fatal("an evicted session was zeroed while a request held it")
	}
	if c.get([32]byte{1}, time.Now()) != nil {
		t.Fatal("an evicted session is still found")
	}
	c.release(a)
	if a.sess.AK[0] != 0 || a.sess.RK[0] != 0 {
		t.Fatal("an evicted session was not zeroed once released")
	}
	c.release(b)
	if b.sess.AK[0] != 2 {
		t.Fatal("a cached session was zeroed on release")
	}

	// Expiry found by another request while one holds it.
	held := c.get([32]byte{2}, time.Now())
	if c.get([32]byte{2}, time.Now().Add(2*time.Hour)) != nil {
		t.Fatal("an expired session was returned")
	}
	if held.sess.AK[0] != 2 {
		t.Fatal("an expired session was zeroed while a request held it")
	}
	c.release(held)
	if held.sess.AK[0] != 0 {
		t.Fatal("an expired session was not zeroed once released")
	}

	// The same ticket opened twice at once: one entry, the spare zeroed.
	spare := session(3)
	first := c.put([32]byte{3}, "", ticket.KeyID{}, session(3))
	second := c.put([32]byte{3}, "", ticket.KeyID{}, spare)
	if first != second || spare.AK[0] != 0 {
		t.Fatal("a ticket opened twice was cached twice")
	}
	c.release(first)
	c.release(second)

	// A disabled cache zeroes each session after its request.
	off := newTicketCache(0)
	e := off.put([32]byte{4}, "", ticket.KeyID{}, session(4))
	off.release(e)
	if e.sess.AK[0] != 0 {
		t.Fatal("an uncached session was not zeroed after its request")
	}
}
