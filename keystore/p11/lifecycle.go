package p11

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/keystore"
)

// Key lifecycle: what `custosd init` and `custosd keys …` do.

// Init creates the service credential and a ticket-sealing key if the token
// has none. It is idempotent, and returns the active credential's kid.
func (k *Keystore) Init(ctx context.Context) (kid string, err error) {
	if err := k.Refresh(ctx); err != nil {
		return "", err
	}
	k.mu.RLock()
	haveCred, haveTicket := k.activeCred != nil, k.activeTicket != nil
	k.mu.RUnlock()
	if !haveCred {
		if _, err := k.RotateCredential(ctx); err != nil {
			return "", err
		}
	}
	if !haveTicket {
		if _, err := k.RotateTicketKey(ctx); err != nil {
			return "", err
		}
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.activeCred.kid, nil
}

func (k *Keystore) newLabel(prefix string) (string, time.Time) {
	created := k.now().UTC()
	return prefix + created.Format(labelTime), created
}

func newID(n int) ([]byte, error) {
	id := make([]byte, n)
	_, err := rand.Read(id)
	return id, err
}

// RotateCredential generates a new service credential in the token and
// makes it active. The old one stays until pruned.
func (k *Keystore) RotateCredential(ctx context.Context) (keystore.KeyInfo, error) {
	label, created := k.newLabel(credentialPrefix)
	id, err := newID(8)
	if err != nil {
		return keystore.KeyInfo{}, err
	}
	params := hsm.DHParams{Prime: group.P().Bytes(), Base: []byte{group.Generator}, PrivateBits: 8 * group.ScalarSize}
	var public []byte
	err = k.tok.Do(ctx, "generate", func(s *hsm.Session) (err error) {
		public, _, _, err = s.GenerateDHKeyPair(params, label, id)
		return err
	})
	if err != nil {
		return keystore.KeyInfo{}, err
	}
	pub, err := group.NewElement(public)
	if err != nil {
		return keystore.KeyInfo{}, fmt.Errorf("p11: the token generated a public value outside the group: %w", err)
	}
	if err := k.Refresh(ctx); err != nil {
		return keystore.KeyInfo{}, err
	}
	return keystore.KeyInfo{Kind: keystore.KindCredential, ID: pub.KeyID(), Label: label, Created: created, Active: true}, nil
}

// RotateTicketKey generates a new ticket-sealing key and makes it active.
// Older keys keep opening the tickets they sealed until pruned.
func (k *Keystore) RotateTicketKey(ctx context.Context) (keystore.KeyInfo, error) {
	label, created := k.newLabel(ticketPrefix)
	id, err := newID(ticket.KeyIDSize)
	if err != nil {
		return keystore.KeyInfo{}, err
	}
	err = k.tok.Do(ctx, "generate", func(s *hsm.Session) error {
		_, err := s.GenerateAESKey(label, id)
		return err
	})
	if err != nil {
		return keystore.KeyInfo{}, err
	}
	if err := k.Refresh(ctx); err != nil {
		return keystore.KeyInfo{}, err
	}
	return keystore.KeyInfo{Kind: keystore.KindTicket, ID: hex.EncodeToString(id), Label: label, Created: created, Active: true}, nil
}

// Prune deletes keys that stopped being active more than window ago: a
// key retires when the next key of its kind is made, so its retirement
// time is that key's creation time (a key made long ago but active until
// a moment ago is not old). The active key of each kind is never deleted.
// Choose window at least as long as a ticket can live (session lifetime
// plus rekey window), or tickets sealed just before a rotation stop
// opening. With dryRun nothing is deleted; the keys that would go are
// returned.
func (k *Keystore) Prune(ctx context.Context, window time.Duration, dryRun bool) ([]keystore.KeyInfo, error) {
	if err := k.Refresh(ctx); err != nil {
		return nil, err
	}
	cutoff := k.now().Add(-window)
	type victim struct {
		info  keystore.KeyInfo
		id    []byte
		kinds []hsm.KeyKind
	}
	var victims []victim
	k.mu.RLock()
	creds := make([]*credentialKey, 0, len(k.creds))
	for _, c := range k.creds {
		creds = append(creds, c)
	}
	sort.Slice(creds, func(i, j int) bool { return newer(creds[j].created, creds[j].id, creds[i].created, creds[i].id) })
	for i, c := range creds[:max(len(creds)-1, 0)] {
		if retired := creds[i+1].created; c != k.activeCred && retired.Before(cutoff) {
			victims = append(victims, victim{
				keystore.KeyInfo{Kind: keystore.KindCredential, ID: c.kid, Label: c.label, Created: c.created, Retired: retired},
				c.id, []hsm.KeyKind{hsm.DHPrivateKey, hsm.DHPublicKey}})
		}
	}
	tickets := make([]*ticketKey, 0, len(k.tickets))
	for _, tk := range k.tickets {
		tickets = append(tickets, tk)
	}
	sort.Slice(tickets, func(i, j int) bool {
		return newer(tickets[j].created, tickets[j].id[:], tickets[i].created, tickets[i].id[:])
	})
	for i, tk := range tickets[:max(len(tickets)-1, 0)] {
		if retired := tickets[i+1].created; tk != k.activeTicket && retired.Before(cutoff) {
			victims = append(victims, victim{
				keystore.KeyInfo{Kind: keystore.KindTicket, ID: hex.EncodeToString(tk.id[:]), Label: tk.label, Created: tk.created, Retired: retired},
				tk.id[:], []hsm.KeyKind{hsm.AESKey}})
		}
	}
	k.mu.RUnlock()
	var pruned []keystore.KeyInfo
	if dryRun {
		for _, v := range victims {
			pruned = append(pruned, v.info)
		}
		return pruned, nil
	}
	for _, v := range victims {
		err := k.tok.Do(ctx, "destroy", func(s *hsm.Session) error {
			for _, kind := range v.kinds {
				if err := s.DestroyKeys(kind, v.id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return pruned, err
		}
		pruned = append(pruned, v.info)
	}
	return pruned, k.Refresh(ctx)
}
