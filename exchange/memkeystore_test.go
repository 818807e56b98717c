package exchange

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
)

// memKeystore is the engine's own test keystore. The engine cannot use
// keystore.Software in its internal tests: every Keystore implementation
// imports this package for its types.
type memKeystore struct {
	mu      sync.RWMutex
	creds   map[string]*privateKey
	active  map[Profile]*PublicKey
	sealers map[ticket.KeyID]cipher.AEAD
	sealID  ticket.KeyID
}

func newMemKeystore(t testing.TB) *memKeystore {
	t.Helper()
	ks := &memKeystore{creds: map[string]*privateKey{}, active: map[Profile]*PublicKey{}, sealers: map[ticket.KeyID]cipher.AEAD{}}
	for _, p := range Profiles {
		k, err := generateKey(p, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		ks.add(k)
	}
	ks.RotateTicketKey()
	return ks
}

func (ks *memKeystore) add(k *privateKey) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.creds[k.pub.KeyID()] = k
	ks.active[k.pub.Profile()] = k.pub
}

// AddCredential makes x the active group-14 credential.
func (ks *memKeystore) AddCredential(x *group.Scalar) {
	ks.add(&privateKey{dh: x, pub: DHKey(x.Public())})
}

// AddCredentialP256 makes x the active P-256 credential.
func (ks *memKeystore) AddCredentialP256(x *p256.Scalar) {
	ks.add(&privateKey{ec: x, pub: ECDHKey(x.Public())})
}

func (ks *memKeystore) RotateTicketKey() {
	key := make([]byte, 32)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	var id ticket.KeyID
	rand.Read(id[:])
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.sealers[id], ks.sealID = aead, id
}

func (ks *memKeystore) Credential(ctx context.Context, p Profile) (*PublicKey, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if x := ks.active[p]; x != nil {
		return x, nil
	}
	return nil, ErrProfileNotServed
}

func (ks *memKeystore) Derive(ctx context.Context, kid string, peer *PublicKey) ([]byte, error) {
	ks.mu.RLock()
	x := ks.creds[kid]
	ks.mu.RUnlock()
	if x == nil || x.pub.Profile() != peer.Profile() {
		return nil, fmt.Errorf("no %s credential %s", peer.Profile(), kid)
	}
	return rekeyAgree(peer, x) // the plain DH of x with peer
}

func (ks *memKeystore) SealingKey(ctx context.Context) (ticket.KeyID, ticket.Scheme, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.sealID, ticket.GCM, nil
}

func (ks *memKeystore) Holds(id ticket.KeyID) bool {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	return ks.sealers[id] != nil
}

func (ks *memKeystore) SealWith(ctx context.Context, id ticket.KeyID, iv, aad, plaintext []byte) ([]byte, error) {
	ks.mu.RLock()
	aead := ks.sealers[id]
	ks.mu.RUnlock()
	return aead.Seal(nil, iv, plaintext, aad), nil
}

func (ks *memKeystore) OpenWith(ctx context.Context, id ticket.KeyID, iv, aad, sealed []byte) ([]byte, error) {
	ks.mu.RLock()
	aead := ks.sealers[id]
	ks.mu.RUnlock()
	if aead == nil {
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
