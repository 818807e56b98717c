package p11

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
)

// Report says what the token can serve, as the last self-test found.
type Report struct {
	// Profiles are the profiles whose active credential derives as its
	// public key says it must.
	Profiles []exchange.Profile
	// Sealing is the active ticket key's scheme; it sealed and opened.
	Sealing ticket.Scheme
	// Refused names each profile not served and why.
	Refused map[exchange.Profile]string
}

// String is the report in one line, for the log and keys list.
func (r Report) String() string {
	var served []string
	for _, p := range r.Profiles {
		served = append(served, p.String())
	}
	s := fmt.Sprintf("serves %s; seals tickets with %s", strings.Join(append(served, "no profile")[:max(len(served), 1)], " and "), r.Sealing)
	for _, p := range exchange.Profiles {
		if why, ok := r.Refused[p]; ok {
			s += fmt.Sprintf("; not %s: %s", p, why)
		}
	}
	return s
}

// selfTestSecret is the public exponent and scalar of the self-test's
// peer: fixed, so that what the token must answer is known from public
// keys alone.
var selfTestSecret = sha256.Sum256([]byte("custos keystore self-test"))

// SelfTest checks that the token can serve an exchange, as a token that
// lists a mechanism and gets it wrong would otherwise show only to the
// first client: each active credential derives against a known peer and
// must give what Go computes from its public key, and the active ticket
// key seals and opens a ticket. A profile whose token has not its
// mechanisms, or whose derive is wrong, is not served (Credential answers
// ErrProfileNotServed, and discovery leaves it out) until a later
// self-test passes. The error, if any, says why nothing can be served.
func (k *Keystore) SelfTest(ctx context.Context) (Report, error) {
	if err := k.Refresh(ctx); err != nil {
		return Report{}, err
	}
	r := Report{Refused: map[exchange.Profile]string{}}
	// A profile whose token lacks the mechanisms or gets the derive wrong
	// stays refused until a later self-test; one that merely has no
	// credential yet is served as soon as one is made (a rotation on
	// another replica), as Credential tells by itself.
	refused := map[exchange.Profile]string{}
	for _, p := range exchange.Profiles {
		k.mu.RLock()
		c := k.activeCred[p]
		k.mu.RUnlock()
		var why string
		sticky := true
		switch can, err := k.can(ctx, credentialKinds[p].capability); {
		case err != nil:
			return r, err
		case !can:
			why = "the token lacks " + mechanismNames[p]
		case c == nil:
			why, sticky = "the token holds no credential of it (custosd init makes one)", false
		default:
			if err := k.selfTestDerive(ctx, c); err != nil {
				if errors.Is(err, exchange.ErrKeystoreUnavailable) {
					return r, err
				}
				why = "its derive fails the self-test: " + err.Error()
			}
		}
		if why != "" {
			r.Refused[p] = why
			if sticky {
				refused[p] = why
			}
			continue
		}
		r.Profiles = append(r.Profiles, p)
	}
	k.mu.Lock()
	k.refused = refused
	k.mu.Unlock()
	id, scheme, err := k.SealingKey(ctx)
	if err != nil {
		return r, err
	}
	r.Sealing = scheme
	msg := []byte("custos self-test ticket")
	t, err := ticket.Seal(ctx, k, rand.Reader, msg)
	if err != nil {
		return r, fmt.Errorf("p11: the active ticket key %x (%s) does not seal: %w", id, scheme, err)
	}
	if got, err := ticket.Open(ctx, k, t); err != nil || !bytes.Equal(got, msg) {
		return r, fmt.Errorf("p11: the active ticket key %x (%s) does not open what it sealed: %v", id, scheme, err)
	}
	if len(r.Profiles) == 0 {
		var whys []string
		for _, p := range exchange.Profiles {
			whys = append(whys, fmt.Sprintf("%s: %s", p, r.Refused[p]))
		}
		return r, fmt.Errorf("p11: the token can serve no profile (%s)", strings.Join(whys, "; "))
	}
	return r, nil
}

// mechanismNames are the mechanisms each profile needs, as messages name
// them.
var mechanismNames = map[exchange.Profile]string{
	exchange.ModP2048: "CKM_DH_PKCS_KEY_PAIR_GEN and CKM_DH_PKCS_DERIVE",
	exchange.P256:     "CKM_EC_KEY_PAIR_GEN and CKM_ECDH1_DERIVE",
}

func (k *Keystore) can(ctx context.Context, c hsm.Capability) (bool, error) {
	var can bool
	err := k.tok.Do(ctx, "mechanisms", func(s *hsm.Session) (err error) {
		can, err = s.Can(c)
		return err
	})
	return can, err
}

// selfTestDerive derives with credential c against the known peer and
// compares with what the public key gives.
func (k *Keystore) selfTestDerive(ctx context.Context, c *credentialKey) error {
	var peer *exchange.PublicKey
	var want []byte
	if c.pub.Profile() == exchange.P256 {
		s, err := p256.NewScalar(selfTestSecret[:])
		if err != nil {
			return err
		}
		defer s.Zero()
		if want, err = s.DH(c.pub.Point()); err != nil {
			return err
		}
		peer = exchange.ECDHKey(s.Public())
	} else {
		s, err := group.NewScalar(selfTestSecret[:])
		if err != nil {
			return err
		}
		peer = exchange.DHKey(s.Public())
		want = new(big.Int).Exp(c.pub.DH().Int(), new(big.Int).SetBytes(selfTestSecret[:]), group.P()).FillBytes(make([]byte, group.Size))
	}
	got, err := k.Derive(ctx, c.kid, peer)
	if err != nil {
		return err
	}
	defer clear(got)
	if !bytes.Equal(got, want) {
		return errors.New("the token's value differs from the one its public key gives")
	}
	return nil
}
