package exchange

import (
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

// ClientKey is a client's long-term credential, of either profile.
type ClientKey struct {
	k *privateKey
}

// GenerateClientKey makes a new credential of profile p.
func GenerateClientKey(rand io.Reader, p Profile) (*ClientKey, error) {
	k, err := generateKey(p, rand)
	if err != nil {
		return nil, err
	}
	return &ClientKey{k: k}, nil
}

// NewClientKey wraps a group-14 private exponent. The key takes ownership of it.
func NewClientKey(priv *group.Scalar) *ClientKey {
	return &ClientKey{k: &privateKey{dh: priv, pub: DHKey(priv.Public())}}
}

// NewClientKeyP256 wraps a P-256 private key. The key takes ownership of it.
func NewClientKeyP256(priv *p256.Scalar) *ClientKey {
	return &ClientKey{k: &privateKey{ec: priv, pub: ECDHKey(priv.Public())}}
}

// Public returns the credential's public key, which the service registers.
func (k *ClientKey) Public() *PublicKey { return k.k.pub }

// Profile returns the credential's profile.
func (k *ClientKey) Profile() Profile { return k.k.pub.Profile() }

// PrivateBytes returns the private key's 32 big-endian bytes, for storing it.
func (k *ClientKey) PrivateBytes() []byte {
	if k.k.ec != nil {
		return k.k.ec.Bytes()
	}
	return k.k.dh.Bytes()
}

// Zero overwrites the private key.
func (k *ClientKey) Zero() { k.k.zero() }

// PendingExchange is an exchange request sent and not yet answered.
type PendingExchange struct {
	key   *ClientKey
	n     *privateKey
	offer []wire.Suite
}

// NewExchange makes a fresh nonce key of the credential's profile and the
// request to send. A nil offer leaves Offer out, which asks for the
// default suite.
func (k *ClientKey) NewExchange(rand io.Reader, offer []wire.Suite) (*PendingExchange, *wire.ExchangeRequest, error) {
	n, err := generateKey(k.Profile(), rand)
	if err != nil {
		return nil, nil, err
	}
	p := &PendingExchange{key: k, n: n, offer: offer}
	return p, &wire.ExchangeRequest{ClientCredential: EncodeKey(k.Public()), ClientNonce: EncodeKey(n.pub), Offer: offer}, nil
}

// ErrWitness means the response's witness did not verify: the responder
// does not hold the service credential's private key, or the response was
// altered. Everything from that response has been discarded.
var ErrWitness = errors.New("exchange: the witness does not verify; the response is not from the service it names or was altered")

// Finish checks the response and returns the session. The nonce key is
// zeroed whatever the outcome; a pending exchange finishes once.
func (p *PendingExchange) Finish(resp *wire.ExchangeResponse) (*Session, error) {
	defer p.n.zero()
	x, r, err := parseServerKeys(resp, p.key.Profile(), true)
	if err != nil {
		return nil, err
	}
	suite, err := checkResponse(resp, p.offer)
	if err != nil {
		return nil, err
	}
	sigma, th, err := clientAgree(p.key.k, p.n, x, r)
	if err != nil {
		return nil, err
	}
	k := schedule(zeroSalt, sigma, th)
	clear(sigma)
	return finishSession(k, resp, suite, p.offer, x)
}

func checkResponse(resp *wire.ExchangeResponse, offer []wire.Suite) (Suite, error) {
	if len(resp.Ticket) == 0 || len(resp.Ticket) > ticket.MaxSize {
		return Suite{}, errors.New("exchange: the response has no usable Ticket")
	}
	if len(resp.Witness) != WitnessSize {
		return Suite{}, fmt.Errorf("exchange: the response's Witness is %d bytes, not %d", len(resp.Witness), WitnessSize)
	}
	if len(resp.Encryption) != 1 || len(resp.Authentication) != 1 {
		return Suite{}, errors.New("exchange: the response must name exactly one Encryption and one Authentication algorithm")
	}
	suite := Suite{Encryption: resp.Encryption[0], Authentication: resp.Authentication[0]}
	if suite != DefaultSuite {
		return Suite{}, fmt.Errorf("exchange: the service chose %s/%s, which this client does not support", suite.Encryption, suite.Authentication)
	}
	offered := offer == nil || slices.ContainsFunc(offer, func(s wire.Suite) bool {
		return slices.Contains(s.Encryption, suite.Encryption) && slices.Contains(s.Authentication, suite.Authentication)
	})
	if !offered {
		return Suite{}, errors.New("exchange: the service chose a suite that was not offered")
	}
	return suite, nil
}

// finishSession verifies the witness and builds the session; k is zeroed.
func finishSession(k *keys, resp *wire.ExchangeResponse, suite Suite, offer []wire.Suite, x *PublicKey) (*Session, error) {
	defer k.zero()
	if !witnessOK(k.wk[:], resp, suite, offer) {
		return nil, ErrWitness
	}
	return &Session{
		Ticket:           slices.Clone([]byte(resp.Ticket)),
		Suite:            suite,
		ServerCredential: x,
		AK:               k.ak, EK: k.ek, RK: k.rk,
	}, nil
}

// witnessOK checks a response's witness in constant time (make ct
// measures it).
func witnessOK(wk []byte, resp *wire.ExchangeResponse, suite Suite, offer []wire.Suite) bool {
	return hmac.Equal(witness(wk, resp.Ticket, suite, offer), resp.Witness)
}

// Session is a client's view of an established session. Sign requests
// with SignRequest; a session shared by concurrent requests is held by
// each (Hold, Release) so that replacing it (Retire) zeroes its keys only
// when the last is done.
type Session struct {
	Ticket []byte
	Suite  Suite
	// ServerCredential is the credential the session was agreed with, of
	// the session's profile. A rekeyed session keeps the one of the
	// session it came from.
	ServerCredential *PublicKey
	AK, EK, RK       [ticket.KeySize]byte

	mu     sync.Mutex
	signer *jwc.Signer // made on first use, from AK and Ticket
	lease  lease
}

// Zero overwrites the session keys.
func (s *Session) Zero() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.zeroLocked()
}

func (s *Session) zeroLocked() {
	clear(s.AK[:])
	clear(s.EK[:])
	clear(s.RK[:])
	if s.signer != nil {
		s.signer.Zero()
	}
}

// PendingRekey is a rekey request sent and not yet answered.
type PendingRekey struct {
	old   *Session
	n     *privateKey
	offer []wire.Suite
}

// NewRekey makes a fresh nonce key of the session's profile and the rekey
// request. The caller sends it signed under s.RK (SPEC §7).
func (s *Session) NewRekey(rand io.Reader, offer []wire.Suite) (*PendingRekey, *wire.ExchangeRequest, error) {
	n, err := generateKey(s.ServerCredential.Profile(), rand)
	if err != nil {
		return nil, nil, err
	}
	p := &PendingRekey{old: s, n: n, offer: offer}
	return p, &wire.ExchangeRequest{ClientNonce: EncodeKey(n.pub), Offer: offer}, nil
}

// Finish checks the rekey response and returns the new session.
func (p *PendingRekey) Finish(resp *wire.ExchangeResponse) (*Session, error) {
	defer p.n.zero()
	_, r, err := parseServerKeys(resp, p.old.ServerCredential.Profile(), false)
	if err != nil {
		return nil, err
	}
	suite, err := checkResponse(resp, p.offer)
	if err != nil {
		return nil, err
	}
	th := rekeyTranscript(p.n.pub, r, p.old.Ticket)
	sigma, err := rekeyAgree(r, p.n)
	if err != nil {
		return nil, err
	}
	k := schedule(p.old.RK[:], sigma, th)
	clear(sigma)
	return finishSession(k, resp, suite, p.offer, p.old.ServerCredential)
}
