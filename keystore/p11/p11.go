// Package p11 is the exchange.Keystore that keeps the service's keys in a PKCS#11
// token: the credential's private key and the ticket-sealing keys are
// generated there, cannot leave, and are only used there.
//
// Keys are found by CKA_ID and a label that says what they are and when they
// were made ("custos-ticket 2026-11-24T18:00:00Z"), so every replica sharing
// a token sees the same inventory, and an operator can read it with any
// PKCS#11 tool. The newest key of each kind is the active one.
package p11

import (
	"context"
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/keystore"
)

const (
	credentialPrefix     = "custos-credential "
	credentialPrefixP256 = "custos-credential-p256 "
	ticketPrefix         = "custos-ticket "
	ticketPrefixCBC      = "custos-ticket-cbc " // an AES key and an HMAC key under one CKA_ID
	// Nanoseconds, so that two rotations in one second still order; RFC
	// 3339 parsing accepts labels with or without the fraction.
	labelTime = time.RFC3339Nano
)

// Keystore is an exchange.Keystore backed by a PKCS#11 token.
type Keystore struct {
	tok *hsm.Token
	// RefreshInterval is how often the inventory is read again, so that
	// keys rotated by another replica are used. Default 30 s.
	RefreshInterval time.Duration
	// Now is the clock for labels and pruning; nil means time.Now.
	Now func() time.Time
	// Sealing, if set, is the scheme new ticket keys seal with; by
	// default the token's mechanisms and a self-test decide.
	Sealing ticket.Scheme
	Log     *slog.Logger

	mu           sync.RWMutex
	creds        map[string]*credentialKey
	activeCred   map[exchange.Profile]*credentialKey
	tickets      map[ticket.KeyID]*ticketKey
	activeTicket *ticketKey
	refreshedAt  time.Time
	// refreshedNano is refreshedAt for the lock-free check of whether a
	// refresh is due, which every request makes (Holds).
	refreshedNano atomic.Int64
	refreshing    bool
	missedAt      time.Time // last refresh caused by a ticket naming an unknown key
	// refused are the profiles the last SelfTest found the token cannot
	// serve, and why.
	refused map[exchange.Profile]string
}

type credentialKey struct {
	id      []byte
	label   string
	created time.Time
	pub     *exchange.PublicKey
	kid     string
	handle  handleCache
}

// credentialKinds are the token objects of each profile's credential.
var credentialKinds = map[exchange.Profile]struct {
	private, public hsm.KeyKind
	prefix          string
	capability      hsm.Capability
}{
	exchange.ModP2048: {hsm.DHPrivateKey, hsm.DHPublicKey, credentialPrefix, hsm.DH},
	exchange.P256:     {hsm.ECPrivateKey, hsm.ECPublicKey, credentialPrefixP256, hsm.ECDH},
}

// publicKey validates a credential's public value as the token returned it.
func publicKey(p exchange.Profile, v []byte) (*exchange.PublicKey, error) {
	if p == exchange.P256 {
		pt, err := p256.Decode(v)
		if err != nil {
			return nil, err
		}
		return exchange.ECDHKey(pt), nil
	}
	e, err := group.NewElement(v)
	if err != nil {
		return nil, err
	}
	return exchange.DHKey(e), nil
}

type ticketKey struct {
	id      ticket.KeyID
	scheme  ticket.Scheme
	label   string
	created time.Time
	handle  handleCache // the AES key
	mac     handleCache // the HMAC key, for ticket.CBCHMAC
}

// handleCache remembers an object handle for as long as the token's handle
// epoch says it is good.
type handleCache struct {
	mu    sync.Mutex
	epoch uint64
	h     hsm.Object
	ok    bool
}

func (c *handleCache) get(s *hsm.Session, kind hsm.KeyKind, id []byte) (hsm.Object, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The epoch is read before the search: if handles go stale while it
	// runs, the handle found is filed under the old epoch and found again
	// next time, never kept as current.
	epoch := s.Epoch()
	if c.ok && c.epoch == epoch {
		return c.h, nil
	}
	h, err := s.FindKey(kind, id)
	if err != nil {
		return 0, err
	}
	c.h, c.epoch, c.ok = h, epoch, true
	return h, nil
}

var _ exchange.Keystore = (*Keystore)(nil)

// Open reads the token's key inventory. A token without keys is fine here;
// Init creates them.
func Open(ctx context.Context, tok *hsm.Token) (*Keystore, error) {
	k := &Keystore{tok: tok}
	if err := k.Refresh(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Keystore) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

func (k *Keystore) log() *slog.Logger {
	if k.Log != nil {
		return k.Log
	}
	return slog.Default()
}

// ErrNoKeys means the token has not been initialised for Custos. The
// service cannot serve without keys, so it counts as the keystore being
// unavailable.
var ErrNoKeys = fmt.Errorf("%w: the token holds no Custos keys; run `custosd init`", exchange.ErrKeystoreUnavailable)

// Refresh reads the inventory from the token.
func (k *Keystore) Refresh(ctx context.Context) error {
	creds := map[string]*credentialKey{}
	tickets := map[ticket.KeyID]*ticketKey{}
	err := k.tok.Do(ctx, "inventory", func(s *hsm.Session) error {
		clear(creds)
		clear(tickets)
		for _, p := range exchange.Profiles {
			if err := findCredentials(s, p, creds, k.log()); err != nil {
				return err
			}
		}
		secrets, err := s.FindKeys(hsm.AESKey)
		if err != nil {
			return err
		}
		for _, o := range secrets {
			if len(o.ID) != ticket.KeyIDSize {
				continue
			}
			tk := &ticketKey{id: ticket.KeyID(o.ID), label: o.Label, scheme: ticket.GCM}
			created, ok := labelled(o, ticketPrefix)
			if !ok {
				if created, ok = labelled(o, ticketPrefixCBC); !ok {
					continue
				}
				if _, err := s.FindKey(hsm.HMACKey, macID(tk.id)); err != nil {
					k.log().Warn("p11: CBC ticket key without its HMAC key; ignored", "label", o.Label)
					continue
				}
				tk.scheme = ticket.CBCHMAC
			}
			tk.created = created
			tickets[tk.id] = tk
		}
		return nil
	})
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	// Keep cached handles of keys already known.
	for kid := range creds {
		if old, ok := k.creds[kid]; ok {
			creds[kid] = old
		}
	}
	for id := range tickets {
		if old, ok := k.tickets[id]; ok {
			tickets[id] = old
		}
	}
	k.creds, k.tickets = creds, tickets
	k.activeCred, k.activeTicket = map[exchange.Profile]*credentialKey{}, nil
	for _, c := range creds {
		p := c.pub.Profile()
		if a := k.activeCred[p]; a == nil || newer(c.created, c.id, a.created, a.id) {
			k.activeCred[p] = c
		}
	}
	for _, tk := range tickets {
		if k.activeTicket == nil || newer(tk.created, tk.id[:], k.activeTicket.created, k.activeTicket.id[:]) {
			k.activeTicket = tk
		}
	}
	k.refreshedAt = k.now()
	k.refreshedNano.Store(k.refreshedAt.UnixNano())
	return nil
}

// findCredentials adds the token's credentials of profile p to creds.
func findCredentials(s *hsm.Session, p exchange.Profile, creds map[string]*credentialKey, log *slog.Logger) error {
	kinds := credentialKinds[p]
	privs, err := s.FindKeys(kinds.private)
	if err != nil {
		return err
	}
	for _, o := range privs {
		created, ok := labelled(o, kinds.prefix)
		if !ok {
			continue
		}
		pubH, err := s.FindKey(kinds.public, o.ID)
		if err != nil {
			log.Warn("p11: credential without its public key; ignored", "label", o.Label)
			continue
		}
		var v []byte
		if p == exchange.P256 {
			v, err = s.PublicPoint(pubH)
		} else {
			v, err = s.PublicValue(pubH)
		}
		if err != nil {
			return err
		}
		pub, err := publicKey(p, v)
		if err != nil {
			log.Warn("p11: credential public key is not valid; ignored", "label", o.Label, "reason", err)
			continue
		}
		c := &credentialKey{id: o.ID, label: o.Label, created: created, pub: pub, kid: pub.KeyID()}
		creds[c.kid] = c
	}
	return nil
}

func newer(a time.Time, aID []byte, b time.Time, bID []byte) bool {
	if !a.Equal(b) {
		return a.After(b)
	}
	return hex.EncodeToString(aID) > hex.EncodeToString(bID)
}

// labelled parses the creation time from a key's label with the given
// prefix; ok is false for keys that are not Custos's of that kind.
func labelled(o hsm.KeyObject, prefix string) (created time.Time, ok bool) {
	if !strings.HasPrefix(o.Label, prefix) {
		return time.Time{}, false
	}
	created, err := time.Parse(labelTime, strings.TrimPrefix(o.Label, prefix))
	return created, err == nil
}

// maybeRefresh reads the inventory again in the background once it is older
// than RefreshInterval.
func (k *Keystore) maybeRefresh() {
	interval := k.RefreshInterval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	now := k.now()
	if now.UnixNano()-k.refreshedNano.Load() <= int64(interval) {
		return
	}
	k.mu.Lock()
	due := !k.refreshing && now.Sub(k.refreshedAt) > interval
	if due {
		k.refreshing = true
	}
	k.mu.Unlock()
	if !due {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := k.Refresh(ctx); err != nil {
			k.log().Warn("p11: refreshing the key inventory failed", "reason", err)
		}
		k.mu.Lock()
		k.refreshing = false
		k.mu.Unlock()
	}()
}

func (k *Keystore) Credential(ctx context.Context, p exchange.Profile) (*exchange.PublicKey, error) {
	k.maybeRefresh()
	k.mu.RLock()
	defer k.mu.RUnlock()
	switch {
	case k.refused[p] != "":
		return nil, fmt.Errorf("p11: the token does not serve %s (%s): %w", p, k.refused[p], exchange.ErrProfileNotServed)
	case k.activeCred[p] != nil:
		return k.activeCred[p].pub, nil
	case len(k.activeCred) == 0:
		return nil, ErrNoKeys
	}
	return nil, fmt.Errorf("p11: the token holds no %s credential: %w", p, exchange.ErrProfileNotServed)
}

func (k *Keystore) credential(kid string) *credentialKey {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.creds[kid]
}

func (k *Keystore) Derive(ctx context.Context, kid string, peer *exchange.PublicKey) ([]byte, error) {
	c := k.credential(kid)
	switch {
	case c == nil:
		return nil, fmt.Errorf("p11: the token holds no credential %s", kid)
	case c.pub.Profile() != peer.Profile():
		return nil, fmt.Errorf("p11: credential %s is not of the %s profile", kid, peer.Profile())
	}
	p := peer.Profile()
	var out []byte
	err := k.tok.Do(ctx, "derive", func(s *hsm.Session) error {
		h, err := c.handle.get(s, credentialKinds[p].private, c.id)
		if err != nil {
			return err
		}
		if p == exchange.P256 {
			out, err = s.DeriveECDH(h, peer.Point().Bytes())
		} else {
			out, err = s.DeriveDH(h, peer.DH().Bytes(), group.Size)
		}
		return err
	})
	return out, err
}

func (k *Keystore) SealingKey(ctx context.Context) (ticket.KeyID, ticket.Scheme, error) {
	k.maybeRefresh()
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.activeTicket == nil {
		return ticket.KeyID{}, 0, ErrNoKeys
	}
	return k.activeTicket.id, k.activeTicket.scheme, nil
}

// ActiveSince returns when the active credential (the oldest active one
// of the profiles served) and ticket key were made, from the inventory in
// memory (zero if there is none), for the key age metric.
func (k *Keystore) ActiveSince() (credential, ticketKey time.Time) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	for _, c := range k.activeCred {
		if credential.IsZero() || c.created.Before(credential) {
			credential = c.created
		}
	}
	if k.activeTicket != nil {
		ticketKey = k.activeTicket.created
	}
	return credential, ticketKey
}

// Holds reports whether the token held the ticket key id when the
// inventory was last read (at most RefreshInterval ago): a key pruned by
// any replica stops opening tickets here, cached or not, within that time.
func (k *Keystore) Holds(id ticket.KeyID) bool {
	k.maybeRefresh()
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.tickets[id] != nil
}

func (k *Keystore) SealWith(ctx context.Context, id ticket.KeyID, iv, aad, plaintext []byte) ([]byte, error) {
	k.mu.RLock()
	tk := k.tickets[id]
	k.mu.RUnlock()
	if tk == nil {
		return nil, fmt.Errorf("p11: the token holds no ticket key %x", id)
	}
	var out []byte
	err := k.tok.Do(ctx, "seal", func(s *hsm.Session) error {
		h, err := tk.handle.get(s, hsm.AESKey, tk.id[:])
		if err != nil {
			return err
		}
		if tk.scheme == ticket.GCM {
			out, err = s.SealGCM(h, iv, aad, plaintext)
			return err
		}
		mac, err := tk.mac.get(s, hsm.HMACKey, macID(tk.id))
		if err != nil {
			return err
		}
		ct, err := s.EncryptCBC(h, iv, plaintext)
		if err != nil {
			return err
		}
		tag, err := s.SignHMAC(mac, macInput(aad, iv, ct))
		out = append(ct, tag...)
		return err
	})
	return out, err
}

// macID is the CKA_ID of a CBC ticket key's HMAC key: the AES key's id and
// "M". The two cannot share one id: NSS softokn keeps one secret key per
// CKA_ID and silently replaces the first.
func macID(id ticket.KeyID) []byte { return append(id[:], 'M') }

// macInput is what a CBC ticket's tag covers: the additional data (the
// ticket's version and key id), the IV and the ciphertext.
func macInput(aad, iv, ct []byte) []byte {
	return append(append(append(make([]byte, 0, len(aad)+len(iv)+len(ct)), aad...), iv...), ct...)
}

func (k *Keystore) OpenWith(ctx context.Context, id ticket.KeyID, iv, aad, sealed []byte) ([]byte, error) {
	tk := k.ticketKey(ctx, id)
	if tk == nil {
		return nil, ticket.ErrInvalid
	}
	if len(iv) != tk.scheme.IVSize() || len(sealed) < tk.scheme.TagSize() {
		return nil, ticket.ErrInvalid // a frame of the other scheme
	}
	var out []byte
	err := k.tok.Do(ctx, "open", func(s *hsm.Session) error {
		h, err := tk.handle.get(s, hsm.AESKey, tk.id[:])
		if err != nil {
			return err
		}
		if tk.scheme == ticket.GCM {
			out, err = s.OpenGCM(h, iv, aad, sealed)
			return err
		}
		mac, err := tk.mac.get(s, hsm.HMACKey, macID(tk.id))
		if err != nil {
			return err
		}
		ct, tag := sealed[:len(sealed)-hsm.HMACSize], sealed[len(sealed)-hsm.HMACSize:]
		want, err := s.SignHMAC(mac, macInput(aad, iv, ct))
		if err != nil {
			return err
		}
		// Compared here in constant time, not by C_Verify: tokens answer
		// a wrong tag with different codes (NSS: CKR_DEVICE_ERROR).
		if !hmac.Equal(tag, want) {
			return hsm.ErrAuthentication
		}
		out, err = s.DecryptCBC(h, iv, ct)
		return err
	})
	switch {
	case errors.Is(err, hsm.ErrAuthentication), errors.Is(err, hsm.ErrObjectNotFound):
		// A forged ticket, or one whose key another replica pruned.
		return nil, ticket.ErrInvalid
	}
	return out, err
}

// ticketKey finds a sealing key by id. An unknown id may be a key another
// replica made since the last refresh, so the inventory is read again — at
// most once a second, so that forged ids cannot keep the token busy.
func (k *Keystore) ticketKey(ctx context.Context, id ticket.KeyID) *ticketKey {
	k.mu.Lock()
	tk := k.tickets[id]
	now := k.now()
	allowed := tk == nil && now.Sub(k.missedAt) > time.Second
	if allowed {
		k.missedAt = now
	}
	k.mu.Unlock()
	if !allowed {
		return tk
	}
	if err := k.Refresh(ctx); err != nil {
		return nil
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.tickets[id]
}

func (k *Keystore) Keys(ctx context.Context) ([]keystore.KeyInfo, error) {
	if err := k.Refresh(ctx); err != nil {
		return nil, err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	var out []keystore.KeyInfo
	for _, c := range k.creds {
		out = append(out, c.info(c == k.activeCred[c.pub.Profile()]))
	}
	for _, tk := range k.tickets {
		out = append(out, keystore.KeyInfo{Kind: keystore.KindTicket, Scheme: tk.scheme, ID: hex.EncodeToString(tk.id[:]), Label: tk.label, Created: tk.created, Active: tk == k.activeTicket})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		if out[i].Profile != out[j].Profile {
			return out[i].Profile < out[j].Profile
		}
		return out[i].Created.Before(out[j].Created)
	})
	return out, nil
}
