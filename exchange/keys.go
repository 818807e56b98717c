package exchange

import (
	"crypto/subtle"
	"fmt"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/wire"
)

// ParseKey checks a received PublicKeyDH in the order SPEC §1 fixes —
// Domain, then the public value, then the kid — and returns its value.
// role names the key in error messages ("ClientNonce", …).
func ParseKey(k *wire.PublicKey, role string) (*group.Element, error) {
	if k == nil {
		return nil, Errorf(Malformed, "The %s key is missing.", role)
	}
	domain := group.Domain()
	if subtle.ConstantTimeCompare(k.Domain, domain[:]) != 1 {
		return nil, Errorf(UnsupportedDomain, "The %s key names a Domain other than RFC 3526 group 14 (YE6bnq1MlX5ojaJto6PLP_PEwA), the only group this service supports.", role)
	}
	e, err := group.DecodeWire(k.Public)
	if err != nil {
		return nil, Errorf(InvalidPublicKey, "The %s key's Public value was refused: %s.", role, err.(*group.InvalidError).Reason)
	}
	if kid := e.KeyID(); k.KID != kid {
		return nil, Errorf(KidMismatch, "The %s key's kid %q does not match its Public value, whose kid is %s.", role, wire.Clip(k.KID), kid)
	}
	return e, nil
}

// EncodeKey returns the PublicKeyDH object for e, with its kid.
func EncodeKey(e *group.Element) *wire.PublicKey {
	domain := group.Domain()
	return &wire.PublicKey{KID: e.KeyID(), Domain: domain[:], Public: e.Wire()}
}

// Request is a validated ExchangeRequest.
type Request struct {
	Credential *group.Element
	Nonce      *group.Element
	Suite      Suite
	offer      []wire.Suite
}

// CredentialKID is the kid of the client's credential, by which the service
// finds the account.
func (r *Request) CredentialKID() string { return r.Credential.KeyID() }

// ParseRequest validates an exchange request: both keys, that they differ,
// and the algorithm offer. It does no token operation, so it is safe to run
// before the client is known.
func ParseRequest(m *wire.ExchangeRequest) (*Request, error) {
	c, err := ParseKey(m.ClientCredential, "ClientCredential")
	if err != nil {
		return nil, err
	}
	n, err := ParseKey(m.ClientNonce, "ClientNonce")
	if err != nil {
		return nil, err
	}
	if c.Equal(n) {
		return nil, Errorf(InvalidPublicKey, "ClientNonce is the same key as ClientCredential; generate a fresh nonce key for every exchange.")
	}
	suite, err := Negotiate(m.Offer)
	if err != nil {
		return nil, err
	}
	return &Request{Credential: c, Nonce: n, Suite: suite, offer: m.Offer}, nil
}

// RekeyRequest is a validated rekey request: a nonce and an offer.
type RekeyRequest struct {
	Nonce *group.Element
	Suite Suite
	offer []wire.Suite
}

// ParseRekeyRequest validates a rekey request, which carries only ClientNonce.
func ParseRekeyRequest(m *wire.ExchangeRequest) (*RekeyRequest, error) {
	if m.ClientCredential != nil {
		return nil, Errorf(Malformed, "A rekey request carries only ClientNonce; remove ClientCredential.")
	}
	n, err := ParseKey(m.ClientNonce, "ClientNonce")
	if err != nil {
		return nil, err
	}
	suite, err := Negotiate(m.Offer)
	if err != nil {
		return nil, err
	}
	return &RekeyRequest{Nonce: n, Suite: suite, offer: m.Offer}, nil
}

// parseServerKeys checks the keys of a successful response. A rekey response
// has no ServerCredential; wantCredential says whether one is expected.
func parseServerKeys(m *wire.ExchangeResponse, wantCredential bool) (x, r *group.Element, err error) {
	if m.Status != 201 {
		return nil, nil, fmt.Errorf("exchange: the service answered status %d (%s): %s", m.Status, m.Error, m.StatusDescription)
	}
	if wantCredential {
		if x, err = ParseKey(m.ServerCredential, "ServerCredential"); err != nil {
			return nil, nil, err
		}
	}
	if r, err = ParseKey(m.ServerNonce, "ServerNonce"); err != nil {
		return nil, nil, err
	}
	return x, r, nil
}
