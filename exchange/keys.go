package exchange

import (
	"crypto/subtle"
	"fmt"
	"io"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/wire"
)

// Profile is one of the protocol's two key agreements: the seed's RFC 3526
// group 14 (SPEC §1, §3) or NIST P-256 (SPEC §9). Sessions of both are
// the same once agreed.
type Profile uint8

const (
	ModP2048 Profile = 1
	P256     Profile = 2
)

// Profiles lists every profile, the seed's first.
var Profiles = []Profile{ModP2048, P256}

// String returns the name the command lines use: modp2048 or p256.
func (p Profile) String() string {
	switch p {
	case ModP2048:
		return "modp2048"
	case P256:
		return "p256"
	}
	return fmt.Sprintf("profile(%d)", uint8(p))
}

// ParseProfile reads a profile's name.
func ParseProfile(name string) (Profile, error) {
	for _, p := range Profiles {
		if p.String() == name {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown profile %q: use modp2048 (RFC 3526 group 14) or p256", name)
}

// PublicKey is a validated public key of either profile; the only ways to
// get one check it.
type PublicKey struct {
	dh *group.Element
	ec *p256.Point
}

// DHKey wraps a group-14 public value.
func DHKey(e *group.Element) *PublicKey { return &PublicKey{dh: e} }

// ECDHKey wraps a P-256 point.
func ECDHKey(p *p256.Point) *PublicKey { return &PublicKey{ec: p} }

// Profile returns the key's profile.
func (k *PublicKey) Profile() Profile {
	if k.ec != nil {
		return P256
	}
	return ModP2048
}

// KeyID returns the key's kid.
func (k *PublicKey) KeyID() string {
	if k.ec != nil {
		return k.ec.KeyID()
	}
	return k.dh.KeyID()
}

// DH returns the group-14 value, or nil for a P-256 key.
func (k *PublicKey) DH() *group.Element { return k.dh }

// Point returns the P-256 point, or nil for a group-14 key.
func (k *PublicKey) Point() *p256.Point { return k.ec }

// Equal reports whether k and o are the same key.
func (k *PublicKey) Equal(o *PublicKey) bool {
	switch {
	case k.Profile() != o.Profile():
		return false
	case k.ec != nil:
		return k.ec.Equal(o.ec)
	}
	return k.dh.Equal(o.dh)
}

// transcriptBytes is the key as the transcript hashes it: BE(y), 256
// bytes, or the 65-byte point.
func (k *PublicKey) transcriptBytes() []byte {
	if k.ec != nil {
		return k.ec.Bytes()
	}
	return k.dh.Bytes()
}

// EncodeKey returns the key's wire object, with its kid.
func EncodeKey(k *PublicKey) *wire.PublicKey {
	if k.ec != nil {
		return &wire.PublicKey{Type: wire.KeyECDH, KID: k.ec.KeyID(), Curve: p256.Curve, Public: k.ec.Bytes()}
	}
	domain := group.Domain()
	return &wire.PublicKey{Type: wire.KeyDH, KID: k.dh.KeyID(), Domain: domain[:], Public: k.dh.Wire()}
}

// ParseKey checks a received key in the order SPEC §1 and §9 fix — Domain
// or crv, then the public value, then the kid — and returns it. role names
// the key in error messages ("ClientNonce", …).
func ParseKey(k *wire.PublicKey, role string) (*PublicKey, error) {
	if k == nil {
		return nil, Errorf(Malformed, "The %s key is missing.", role)
	}
	var key *PublicKey
	if k.Type == wire.KeyECDH {
		if k.Curve != p256.Curve {
			return nil, Errorf(UnsupportedDomain, "The %s key names the curve %q; the only curve this service supports is P-256.", role, wire.Clip(k.Curve))
		}
		p, err := p256.Decode(k.Public)
		if err != nil {
			return nil, Errorf(InvalidPublicKey, "The %s key's Public point was refused: %s.", role, err.(*p256.InvalidError).Reason)
		}
		key = ECDHKey(p)
	} else {
		domain := group.Domain()
		if subtle.ConstantTimeCompare(k.Domain, domain[:]) != 1 {
			return nil, Errorf(UnsupportedDomain, "The %s key names a Domain other than RFC 3526 group 14 (YE6bnq1MlX5ojaJto6PLP_PEwA), the only group this service supports.", role)
		}
		e, err := group.DecodeWire(k.Public)
		if err != nil {
			return nil, Errorf(InvalidPublicKey, "The %s key's Public value was refused: %s.", role, err.(*group.InvalidError).Reason)
		}
		key = DHKey(e)
	}
	if kid := key.KeyID(); k.KID != kid {
		return nil, Errorf(KidMismatch, "The %s key's kid %q does not match its Public value, whose kid is %s.", role, wire.Clip(k.KID), kid)
	}
	return key, nil
}

// privateKey is a private key of either profile with its public key.
type privateKey struct {
	dh  *group.Scalar
	ec  *p256.Scalar
	pub *PublicKey
}

func generateKey(p Profile, rand io.Reader) (*privateKey, error) {
	if p == P256 {
		s, err := p256.GenerateScalar(rand)
		if err != nil {
			return nil, err
		}
		return &privateKey{ec: s, pub: ECDHKey(s.Public())}, nil
	}
	s, err := group.GenerateScalar(rand)
	if err != nil {
		return nil, err
	}
	return &privateKey{dh: s, pub: DHKey(s.Public())}, nil
}

func (k *privateKey) zero() {
	if k.ec != nil {
		k.ec.Zero()
	} else {
		k.dh.Zero()
	}
}

// Request is a validated ExchangeRequest: two keys of one profile.
type Request struct {
	Credential *PublicKey
	Nonce      *PublicKey
	Suite      Suite
	offer      []wire.Suite
}

// CredentialKID is the kid of the client's credential, by which the service
// finds the account.
func (r *Request) CredentialKID() string { return r.Credential.KeyID() }

// Profile is the exchange's profile, its keys'.
func (r *Request) Profile() Profile { return r.Credential.Profile() }

// ParseRequest validates an exchange request: both keys, that they are of
// one profile and differ, and the algorithm offer. It does no token
// operation, so it is safe to run before the client is known.
func ParseRequest(m *wire.ExchangeRequest) (*Request, error) {
	c, err := ParseKey(m.ClientCredential, "ClientCredential")
	if err != nil {
		return nil, err
	}
	n, err := ParseKey(m.ClientNonce, "ClientNonce")
	if err != nil {
		return nil, err
	}
	if c.Profile() != n.Profile() {
		return nil, Errorf(Malformed, "ClientCredential is a %s key and ClientNonce a %s key; both keys of an exchange are of one kind.", m.ClientCredential.Type, m.ClientNonce.Type)
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
	Nonce *PublicKey
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

// parseServerKeys checks the keys of a successful response, which must be
// of the profile p. A rekey response has no ServerCredential;
// wantCredential says whether one is expected.
func parseServerKeys(m *wire.ExchangeResponse, p Profile, wantCredential bool) (x, r *PublicKey, err error) {
	if m.Status != 201 {
		return nil, nil, fmt.Errorf("exchange: the service answered status %d (%s): %s", m.Status, m.Error, m.StatusDescription)
	}
	if wantCredential {
		if x, err = ParseKey(m.ServerCredential, "ServerCredential"); err != nil {
			return nil, nil, err
		}
		if x.Profile() != p {
			return nil, nil, fmt.Errorf("exchange: the service answered a %s exchange with a %s ServerCredential", p, x.Profile())
		}
	}
	if r, err = ParseKey(m.ServerNonce, "ServerNonce"); err != nil {
		return nil, nil, err
	}
	if r.Profile() != p {
		return nil, nil, fmt.Errorf("exchange: the service answered a %s exchange with a %s ServerNonce", p, r.Profile())
	}
	return x, r, nil
}
