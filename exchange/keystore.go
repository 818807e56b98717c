package exchange

import (
	"context"
	"errors"

	"github.com/custos-kx/custos/internal/ticket"
)

// Keystore is what the engine needs of key custody: the service credential
// of each profile served, the one Diffie-Hellman derivation with its
// private key that each exchange costs, and an AEAD for tickets under keys
// it names. The engine never sees a private key. The implementations are
// in package keystore (in memory, for tests) and keystore/p11 (a PKCS#11
// token).
type Keystore interface {
	// Credential returns the active service credential of profile p, or
	// an error wrapping ErrProfileNotServed if there is none.
	Credential(ctx context.Context, p Profile) (*PublicKey, error)
	// Derive returns the Diffie-Hellman value of the private key of the
	// credential named by kid with peer, a key of the same profile: peer^x
	// mod p as exactly 256 big-endian bytes (group 14), or the 32-byte
	// x-coordinate of x·peer (P-256). peer must already be validated:
	// tokens do not check it. The caller zeroes the result.
	Derive(ctx context.Context, kid string, peer *PublicKey) ([]byte, error)
	ticket.Sealer
}

// ErrKeystoreUnavailable is what a Keystore's errors wrap when the key
// custody itself cannot be used (the token is unreachable, or has no
// session to lend in time), as opposed to a refusal of the input or a bug.
// Only it becomes 503 KeystoreUnavailable; the cause is for logs only.
var ErrKeystoreUnavailable = errors.New("keystore unavailable")

// ErrProfileNotServed is what a Keystore's Credential wraps when it holds
// no credential of the profile asked for. An exchange of that profile is
// refused 422 UnsupportedDomain, and discovery leaves the profile out.
var ErrProfileNotServed = errors.New("profile not served")
