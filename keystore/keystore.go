// Package keystore is the seam between the exchange engine and key custody.
// The engine asks a Keystore for the service credential, for the one
// Diffie-Hellman derivation each exchange needs, and to seal and open
// tickets; it never sees a private key. Production uses the PKCS#11
// implementation in keystore/p11; Software keeps keys in memory for tests,
// fuzzing and benchmarks that must not depend on a token.
package keystore

import (
	"context"
	"errors"
	"time"

	"github.com/custos-kx/custos/internal/group"
)

// Keystore holds the service's private keys and performs the operations that
// need them.
type Keystore interface {
	// Credential returns the active service credential's public value.
	Credential(ctx context.Context) (*group.Element, error)
	// Derive returns peer^x mod p as exactly 256 big-endian bytes, where x is
	// the private key of the credential named by kid. peer must already be
	// validated: tokens do not check it. The caller zeroes the result.
	Derive(ctx context.Context, kid string, peer *group.Element) ([]byte, error)
	// Seal encrypts a ticket plaintext under the active sealing key and
	// returns the whole ticket.
	Seal(ctx context.Context, plaintext []byte) ([]byte, error)
	// Open returns the plaintext of a ticket sealed by any sealing key still
	// held. A ticket that does not open gives ticket.ErrInvalid.
	Open(ctx context.Context, ticket []byte) ([]byte, error)
	// Keys lists the keys held, for operators.
	Keys(ctx context.Context) ([]KeyInfo, error)
}

// KeyKind tells what a key is for.
type KeyKind string

const (
	KindCredential KeyKind = "credential"
	KindTicket     KeyKind = "ticket"
)

// KeyInfo describes one key without revealing it.
type KeyInfo struct {
	Kind    KeyKind
	ID      string // credential kid, or ticket key id in hex
	Label   string
	Created time.Time
	Active  bool
}

// ErrUnavailable wraps every failure of the key custody itself (token
// unreachable, session errors) as opposed to a refusal of the input. The
// service answers it with 503 KeystoreUnavailable and never shows the cause.
var ErrUnavailable = errors.New("keystore unavailable")

// ErrUnknownKey is returned by Derive for a kid the keystore does not hold.
var ErrUnknownKey = errors.New("keystore: no such key")
