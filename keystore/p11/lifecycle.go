package p11

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/keystore"
)

// Key lifecycle: what `custosd init` and `custosd keys …` do.

// Init creates a service credential of each profile the token has the
// mechanisms for, and a ticket-sealing key, where the token has none. It
// is idempotent, and returns the active credentials, one per profile
// served.
func (k *Keystore) Init(ctx context.Context) ([]keystore.KeyInfo, error) {
	if err := k.Refresh(ctx); err != nil {
		return nil, err
	}
	for _, p := range exchange.Profiles {
		k.mu.RLock()
		have := k.activeCred[p] != nil
		k.mu.RUnlock()
		if have {
			continue
		}
		var can bool
		err := k.tok.Do(ctx, "mechanisms", func(s *hsm.Session) (err error) {
			can, err = s.Can(credentialKinds[p].capability)
			return err
		})
		if err != nil {
			return nil, err
		}
		if !can {
			k.log().Info("p11: the token lacks the mechanisms of a profile; not serving it", "profile", p.String())
			continue
		}
		if _, err := k.RotateCredential(ctx, p); err != nil {
			return nil, err
		}
	}
	k.mu.RLock()
	haveTicket, served := k.activeTicket != nil, len(k.activeCred)
	k.mu.RUnlock()
	if served == 0 {
		return nil, fmt.Errorf("p11: the token has the mechanisms of no profile: group 14 needs CKM_DH_PKCS_KEY_PAIR_GEN and CKM_DH_PKCS_DERIVE, P-256 needs CKM_EC_KEY_PAIR_GEN and CKM_ECDH1_DERIVE")
	}
	if !haveTicket {
		if _, err := k.RotateTicketKey(ctx); err != nil {
			return nil, err
		}
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	var active []keystore.KeyInfo
	for _, p := range exchange.Profiles {
		if c := k.activeCred[p]; c != nil {
			active = append(active, c.info(true))
		}
	}
	return active, nil
}

func (c *credentialKey) info(active bool) keystore.KeyInfo {
	return keystore.KeyInfo{Kind: keystore.KindCredential, Profile: c.pub.Profile(), ID: c.kid, Label: c.label, Created: c.created, Active: active}
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

// RotateCredential generates a new service credential of profile p in the
// token and makes it active. The old one stays until pruned.
func (k *Keystore) RotateCredential(ctx context.Context, p exchange.Profile) (keystore.KeyInfo, error) {
	var (
		label   string
		created time.Time
		pub     *exchange.PublicKey
	)
	err := k.keep(ctx, p.String()+" credential", func() error {
		label, created = k.newLabel(credentialKinds[p].prefix)
		id, err := newID(8)
		if err != nil {
			return err
		}
		var public []byte
		err = k.tok.Do(ctx, "generate", func(s *hsm.Session) (err error) {
			if p == exchange.P256 {
				public, _, _, err = s.GenerateECKeyPair(label, id)
				return err
			}
			params := hsm.DHParams{Prime: group.P().Bytes(), Base: []byte{group.Generator}, PrivateBits: 8 * group.ScalarSize}
			public, _, _, err = s.GenerateDHKeyPair(params, label, id)
			return err
		})
		if err != nil {
			return err
		}
		if pub, err = publicKey(p, public); err != nil {
			return fmt.Errorf("p11: the token generated an invalid %s public key: %w", p, err)
		}
		return nil
	}, func() bool {
		k.mu.RLock()
		defer k.mu.RUnlock()
		_, ok := k.creds[pub.KeyID()]
		return ok
	})
	if err != nil {
		return keystore.KeyInfo{}, err
	}
	return keystore.KeyInfo{Kind: keystore.KindCredential, Profile: p, ID: pub.KeyID(), Label: label, Created: created, Active: true}, nil
}

// keep makes a key with make, then checks from the token itself that the
// key was kept, and makes it again if not, up to
// three times. Measured here on SoftHSM: about one ticket-key rotation in
// forty, made while a replica read the same token, answered CKR_OK and left
// a key no other process ever saw (the rotating one had it in memory); with
// this check, none in 150. The check re-initialises the module first, so
// that it reads the token and not the module's memory of it.
func (k *Keystore) keep(ctx context.Context, what string, make func() error, kept func() bool) error {
	for attempt := 1; ; attempt++ {
		if err := make(); err != nil {
			return err
		}
		if err := k.tok.Reread(ctx); err != nil {
			return err
		}
		if err := k.Refresh(ctx); err != nil {
			return err
		}
		if kept() {
			return nil
		}
		if attempt == 3 {
			return fmt.Errorf("p11: the token answered three times that it made a new %s, and kept none of them; try again, or look at the token's own log", what)
		}
		k.log().Warn("p11: the token did not keep a new key it said it made; making it again", "key", what)
	}
}

// RotateTicketKey generates a new ticket-sealing key and makes it active.
// Older keys keep opening the tickets they sealed until pruned. The new
// key seals with AES-GCM where the token lists it and passes a self-test,
// else with AES-CBC-PAD and HMAC-SHA-256 (see Sealing).
func (k *Keystore) RotateTicketKey(ctx context.Context) (keystore.KeyInfo, error) {
	scheme, err := k.sealingScheme(ctx)
	if err != nil {
		return keystore.KeyInfo{}, err
	}
	prefix := ticketPrefix
	if scheme == ticket.CBCHMAC {
		prefix = ticketPrefixCBC
	}
	var (
		label   string
		created time.Time
		id      []byte
	)
	err = k.keep(ctx, "ticket key", func() error {
		label, created = k.newLabel(prefix)
		if id, err = newID(ticket.KeyIDSize); err != nil {
			return err
		}
		return k.tok.Do(ctx, "generate", func(s *hsm.Session) error {
			if _, err := s.GenerateAESKey(label, id); err != nil {
				return err
			}
			if scheme == ticket.CBCHMAC {
				_, err := s.GenerateHMACKey(label, macID(ticket.KeyID(id)))
				return err
			}
			return nil
		})
	}, func() bool {
		k.mu.RLock()
		defer k.mu.RUnlock()
		_, ok := k.tickets[ticket.KeyID(id)]
		return ok
	})
	if err != nil {
		return keystore.KeyInfo{}, err
	}
	return keystore.KeyInfo{Kind: keystore.KindTicket, Scheme: scheme, ID: hex.EncodeToString(id), Label: label, Created: created, Active: true}, nil
}

// sealingScheme chooses how new ticket keys seal: Sealing if set, else
// AES-GCM when the token lists it and it passes SelfTestGCM, else
// AES-CBC-PAD with HMAC-SHA-256 when the token lists those.
func (k *Keystore) sealingScheme(ctx context.Context) (ticket.Scheme, error) {
	if k.Sealing != 0 {
		return k.Sealing, nil
	}
	var scheme ticket.Scheme
	err := k.tok.Do(ctx, "self-test", func(s *hsm.Session) error {
		gcm, err := s.Can(hsm.GCM)
		if err != nil {
			return err
		}
		if gcm {
			err := s.SelfTestGCM()
			if err == nil {
				scheme = ticket.GCM
				return nil
			}
			k.log().Warn("p11: the token lists AES-GCM but fails its self-test; sealing tickets with AES-CBC-PAD and HMAC-SHA-256", "reason", err)
		}
		ok, err := s.Can(hsm.CBCHMAC)
		if err == nil && ok {
			scheme = ticket.CBCHMAC
		}
		return err
	})
	if err == nil && scheme == 0 {
		err = errors.New("p11: the token can seal tickets neither with AES-GCM (CKM_AES_GCM) nor with AES-CBC-PAD and HMAC-SHA-256 (CKM_AES_CBC_PAD, CKM_SHA256_HMAC, CKM_GENERIC_SECRET_KEY_GEN)")
	}
	return scheme, err
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
	type object struct {
		kind hsm.KeyKind
		id   []byte
	}
	type victim struct {
		info    keystore.KeyInfo
		objects []object
	}
	var victims []victim
	k.mu.RLock()
	for _, p := range exchange.Profiles {
		var creds []*credentialKey
		for _, c := range k.creds {
			if c.pub.Profile() == p {
				creds = append(creds, c)
			}
		}
		sort.Slice(creds, func(i, j int) bool { return newer(creds[j].created, creds[j].id, creds[i].created, creds[i].id) })
		for i, c := range creds[:max(len(creds)-1, 0)] {
			if retired := creds[i+1].created; c != k.activeCred[p] && retired.Before(cutoff) {
				info := c.info(false)
				info.Retired = retired
				victims = append(victims, victim{info, []object{{credentialKinds[p].private, c.id}, {credentialKinds[p].public, c.id}}})
			}
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
				keystore.KeyInfo{Kind: keystore.KindTicket, Scheme: tk.scheme, ID: hex.EncodeToString(tk.id[:]), Label: tk.label, Created: tk.created, Retired: retired},
				[]object{{hsm.AESKey, tk.id[:]}, {hsm.HMACKey, macID(tk.id)}}})
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
			for _, o := range v.objects {
				if err := s.DestroyKeys(o.kind, o.id); err != nil {
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
