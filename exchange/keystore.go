package exchange

import (
	"context"
	"errors"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/ticket"
)

// Keystore is what the engine needs of key custody: the service credential,
// the one Diffie-Hellman derivation with its private key that each exchange
// costs, and an AEAD for tickets under keys it names. The engine never sees
// a private key. The implementations are in package keystore (in memory,
// for tests) and keystore/p11 (a PKCS#11 token).
type Keystore interface {
	// Credential returns the active service credential's public value.
	Credential(ctx context.Context) (*group.Element, error)
	// Derive returns peer^x mod p as exactly 256 big-endian bytes, where x
	// is the private key of the credential named by kid. peer must already
	// be validated: tokens do not check it. The caller zeroes the result.
	Derive(ctx context.Context, kid string, peer *group.Element) ([]byte, error)
	ticket.Sealer
}

// ErrKeystoreUnavailable is what a Keystore's errors wrap when the key
// custody itself cannot be used (the token is unreachable, or has no
// session to lend in time), as opposed to a refusal of the input or a bug.
// Only it becomes 503 KeystoreUnavailable; the cause is for logs only.
var ErrKeystoreUnavailable = errors.New("keystore unavailable")
