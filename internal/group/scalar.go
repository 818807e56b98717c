package group

import (
	"errors"
	"io"
	"math/big"

	"filippo.io/bigmod"
)

// ScalarSize is the length of a private exponent: 256 bits, as SP 800-56A
// allows for a 2048-bit group (2·112 bits at least).
const ScalarSize = 32

// Scalar is a private exponent: a uniformly random non-zero 256-bit integer.
// Call Zero when it is no longer needed.
type Scalar struct {
	b [ScalarSize]byte
}

// GenerateScalar draws a private exponent from rand.
func GenerateScalar(rand io.Reader) (*Scalar, error) {
	s := new(Scalar)
	for {
		if _, err := io.ReadFull(rand, s.b[:]); err != nil {
			return nil, err
		}
		if !s.isZero() {
			return s, nil
		}
	}
}

// NewScalar returns the private exponent with the given 32 big-endian bytes.
func NewScalar(b []byte) (*Scalar, error) {
	if len(b) != ScalarSize {
		return nil, errors.New("group: a private exponent is exactly 32 bytes")
	}
	s := new(Scalar)
	copy(s.b[:], b)
	if s.isZero() {
		return nil, errors.New("group: a private exponent must not be zero")
	}
	return s, nil
}

func (s *Scalar) isZero() bool {
	var acc byte
	for _, c := range s.b {
		acc |= c
	}
	return acc == 0
}

// Bytes returns a copy of the exponent's 32 big-endian bytes.
func (s *Scalar) Bytes() []byte { return append([]byte(nil), s.b[:]...) }

// Zero overwrites the exponent.
func (s *Scalar) Zero() { clear(s.b[:]) }

// Public returns g^s, computed in constant time.
func (s *Scalar) Public() *Element {
	out := expBase(s.b[:])
	e, err := inSubgroup(new(big.Int).SetBytes(out.Bytes(pMod)))
	out.SetUint(0)
	if err != nil {
		// g generates the order-q subgroup and 0 < s < q.
		panic("group: g^s is 1")
	}
	return e
}

// weightedSize is the byte length of n + d·c: below 2^256 + 2^384 < 2^392.
const weightedSize = 49

// WeightedExponent returns n + d·c, the client's exponent in the weighted
// combination, as weightedSize big-endian bytes. It is computed in constant
// time modulo q; since q > 2^392 the reduction never happens and the result is
// the exact integer, so it can be used with any base, in or out of the
// subgroup. The caller zeroes the result.
func WeightedExponent(n, c *Scalar, d []byte) []byte {
	if len(d) > 16 {
		panic("group: weight longer than 128 bits")
	}
	dn, _ := bigmod.NewNat().SetBytes(d, qMod)
	cn, _ := bigmod.NewNat().SetBytes(c.b[:], qMod)
	nn, _ := bigmod.NewNat().SetBytes(n.b[:], qMod)
	cn.Mul(dn, qMod).Add(nn, qMod)
	full := cn.Bytes(qMod)
	out := append([]byte(nil), full[len(full)-weightedSize:]...)
	clear(full)
	cn.SetUint(0)
	nn.SetUint(0)
	return out
}
