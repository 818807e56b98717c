package group

import (
	"errors"

	"filippo.io/bigmod"
)

// Secret is a secret group value — σ or one of its factors — held in
// constant-time form. Call Zero when done.
type Secret struct {
	n *bigmod.Nat
}

// ExpSecret returns base^e mod p in constant time with respect to e (its
// length is public). base is public.
func ExpSecret(base *Element, e []byte) *Secret {
	b, _ := bigmod.NewNat().SetBytes(base.Bytes(), pMod)
	return &Secret{n: bigmod.NewNat().Exp(b, e, pMod)}
}

// NewSecret takes a secret value as big-endian bytes, as a token's derive
// returns it. It must be less than p.
func NewSecret(be []byte) (*Secret, error) {
	n, err := bigmod.NewNat().SetBytes(be, pMod)
	if err != nil {
		return nil, errors.New("group: secret value is not less than p")
	}
	return &Secret{n: n}, nil
}

// Mul sets s = s·t mod p and returns s.
func (s *Secret) Mul(t *Secret) *Secret {
	s.n.Mul(t.n, pMod)
	return s
}

// Degenerate reports whether s is 0, 1 or p−1, values a shared secret must
// never take (they mean a peer sent a small-subgroup or zero element).
func (s *Secret) Degenerate() bool {
	return s.n.IsZero()|s.n.IsOne()|s.n.IsMinusOne(pMod) == 1
}

// Bytes returns s as exactly Size big-endian bytes. The caller zeroes them.
func (s *Secret) Bytes() []byte { return s.n.Bytes(pMod) }

// Zero overwrites s.
func (s *Secret) Zero() { s.n.SetUint(0) }

// ExpScalar returns base^s mod p in constant time with respect to s.
func ExpScalar(base *Element, s *Scalar) *Secret { return ExpSecret(base, s.b[:]) }
