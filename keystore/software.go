package keystore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
)

// Software is an exchange.Keystore whose keys live in process memory. It exists so
// that the engine can be tested, fuzzed and benchmarked without a token; a
// service must not use it, since its whole point is that keys never leave one.
type Software struct {
	mu      sync.RWMutex
	rand    io.Reader
	creds   map[string]softCredential
	active  map[exchange.Profile]*exchange.PublicKey
	sealers map[ticket.KeyID]cipher.AEAD
	sealID  ticket.KeyID
	info    []KeyInfo
}

// softCredential is a credential's private key, of one profile.
type softCredential struct {
	dh *group.Scalar
	ec *p256.Scalar
}

// NewSoftware returns a Software keystore with a fresh credential of each
// profile and a sealing key. rand is used for key generation and ticket
// IVs; nil means crypto/rand.
func NewSoftware(rand io.Reader) (*Software, error) {
	s := &Software{rand: rand, creds: map[string]softCredential{}, active: map[exchange.Profile]*exchange.PublicKey{}, sealers: map[ticket.KeyID]cipher.AEAD{}}
	if s.rand == nil {
		s.rand = cryptoRand
	}
	x, err := group.GenerateScalar(s.rand)
	if err != nil {
		return nil, err
	}
	s.AddCredential(x)
	xe, err := p256.GenerateScalar(s.rand)
	if err != nil {
		return nil, err
	}
	s.AddCredentialP256(xe)
	if _, err := s.RotateTicketKey(); err != nil {
		return nil, err
	}
	return s, nil
}

var cryptoRand = rand.Reader

// AddCredential makes x the active group-14 credential, keeping earlier
// ones for Derive.
func (s *Software) AddCredential(x *group.Scalar) string {
	return s.addCredential(softCredential{dh: x}, exchange.DHKey(x.Public()))
}

// AddCredentialP256 makes x the active P-256 credential, keeping earlier
// ones for Derive.
func (s *Software) AddCredentialP256(x *p256.Scalar) string {
	return s.addCredential(softCredential{ec: x}, exchange.ECDHKey(x.Public()))
}

// DropProfile forgets the active credential of profile p, as a token
// without its mechanisms would have none.
func (s *Software) DropProfile(p exchange.Profile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.active, p)
}

func (s *Software) addCredential(c softCredential, pub *exchange.PublicKey) string {
	kid := pub.KeyID()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.creds[kid] = c
	s.active[pub.Profile()] = pub
	s.info = append(s.info, KeyInfo{Kind: KindCredential, Profile: pub.Profile(), ID: kid, Created: time.Now()})
	return kid
}

// RotateTicketKey makes a new sealing key active; old ones still open tickets.
func (s *Software) RotateTicketKey() (ticket.KeyID, error) {
	key := make([]byte, 32)
	var id ticket.KeyID
	if _, err := io.ReadFull(s.rand, key); err != nil {
		return id, err
	}
	if _, err := io.ReadFull(s.rand, id[:]); err != nil {
		return id, err
	}
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	clear(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sealers[id] = aead
	s.sealID = id
	s.info = append(s.info, KeyInfo{Kind: KindTicket, ID: hex.EncodeToString(id[:]), Created: time.Now()})
	return id, nil
}

func (s *Software) Credential(ctx context.Context, p exchange.Profile) (*exchange.PublicKey, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if x := s.active[p]; x != nil {
		return x, nil
	}
	return nil, fmt.Errorf("keystore: no %s credential: %w", p, exchange.ErrProfileNotServed)
}

func (s *Software) Derive(ctx context.Context, kid string, peer *exchange.PublicKey) ([]byte, error) {
	s.mu.RLock()
	x, ok := s.creds[kid]
	s.mu.RUnlock()
	switch {
	case !ok:
		return nil, fmt.Errorf("keystore: no credential %s", kid)
	case x.ec != nil && peer.Point() != nil:
		return x.ec.DH(peer.Point())
	case x.dh != nil && peer.DH() != nil:
		sec := group.ExpScalar(peer.DH(), x.dh)
		defer sec.Zero()
		return sec.Bytes(), nil
	}
	return nil, fmt.Errorf("keystore: credential %s is not of the %s profile", kid, peer.Profile())
}

func (s *Software) SealingKey(ctx context.Context) (ticket.KeyID, ticket.Scheme, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sealID, ticket.GCM, nil
}

func (s *Software) Holds(id ticket.KeyID) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sealers[id] != nil
}

// DropTicketKey forgets a sealing key, as pruning does in a token.
func (s *Software) DropTicketKey(id ticket.KeyID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sealers, id)
}

func (s *Software) SealWith(ctx context.Context, id ticket.KeyID, iv, aad, plaintext []byte) ([]byte, error) {
	s.mu.RLock()
	aead, ok := s.sealers[id]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("keystore: no ticket key %x", id)
	}
	return aead.Seal(nil, iv, plaintext, aad), nil
}

func (s *Software) OpenWith(ctx context.Context, id ticket.KeyID, iv, aad, sealed []byte) ([]byte, error) {
	s.mu.RLock()
	aead, ok := s.sealers[id]
	s.mu.RUnlock()
	if !ok {
		return nil, ticket.ErrInvalid
	}
	if len(iv) != aead.NonceSize() {
		return nil, ticket.ErrInvalid // a frame of another scheme
	}
	pt, err := aead.Open(nil, iv, sealed, aad)
	if err != nil {
		return nil, ticket.ErrInvalid
	}
	return pt, nil
}

func (s *Software) Keys(ctx context.Context) ([]KeyInfo, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := append([]KeyInfo(nil), s.info...)
	for i := range out {
		switch out[i].Kind {
		case KindCredential:
			out[i].Active = s.active[out[i].Profile] != nil && out[i].ID == s.active[out[i].Profile].KeyID()
		case KindTicket:
			out[i].Active = out[i].ID == hex.EncodeToString(s.sealID[:])
		}
	}
	return out, nil
}
