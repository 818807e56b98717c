// Package keystore holds the implementations of exchange.Keystore, the
// seam between the engine and key custody: Software here, which keeps keys
// in memory for tests, fuzzing and benchmarks that must not depend on a
// token, and the PKCS#11 keystore in keystore/p11, which production uses.
// It also describes keys for operators.
package keystore

import (
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/ticket"
)

// KeyKind tells what a key is for.
type KeyKind string

const (
	KindCredential KeyKind = "credential"
	KindTicket     KeyKind = "ticket"
)

// KeyInfo describes one key without revealing it.
type KeyInfo struct {
	Kind KeyKind
	// Profile is a credential's profile; zero for a ticket key.
	Profile exchange.Profile
	// Scheme is how a ticket key seals; zero for a credential.
	Scheme  ticket.Scheme
	ID      string // credential kid, or ticket key id in hex
	Label   string
	Created time.Time
	// Retired is when the key stopped being active (the next key of its
	// kind was made); zero for the active key.
	Retired time.Time
	Active  bool
}
