package group

import (
	"crypto/subtle"
	"math/big"

	"github.com/custos-kx/custos/internal/udf"
)

// Element is a validated public value: 2 ≤ y ≤ p−2 and y is in the order-q
// subgroup. An *Element always satisfies this; the only ways to get one check it.
type Element struct {
	v    *big.Int
	wire []byte
}

// InvalidError says why a received public value was refused.
type InvalidError struct {
	Reason string
}

func (e *InvalidError) Error() string { return "invalid public value: " + e.Reason }

func invalid(reason string) error { return &InvalidError{Reason: reason} }

// MaxWireSize is the longest acceptable wire encoding: 256 bytes of value and
// the sign byte two's complement needs when the top bit is set.
const MaxWireSize = Size + 1

// DecodeWire decodes and validates a public value in its wire form, the
// minimal little-endian two's-complement encoding.
func DecodeWire(b []byte) (*Element, error) {
	switch n := len(b); {
	case n == 0:
		return nil, invalid("the encoding is empty")
	case n > MaxWireSize:
		return nil, invalid("the encoding is longer than 257 bytes")
	case b[n-1]&0x80 != 0:
		return nil, invalid("the value is negative (top bit of the last byte is set)")
	case n > 1 && b[n-1] == 0 && b[n-2]&0x80 == 0:
		return nil, invalid("the encoding is not minimal (it ends in a redundant zero byte)")
	}
	be := make([]byte, len(b))
	for i, c := range b {
		be[len(b)-1-i] = c
	}
	return newElement(new(big.Int).SetBytes(be))
}

// NewElement validates a public value given as a big-endian integer of at
// most Size bytes, as a PKCS#11 token returns it.
func NewElement(be []byte) (*Element, error) {
	if len(be) > Size {
		return nil, invalid("the value is longer than 256 bytes")
	}
	return newElement(new(big.Int).SetBytes(be))
}

// NewElementInt validates a public value given as a big.Int.
func NewElementInt(v *big.Int) (*Element, error) {
	if v.Sign() < 0 {
		return nil, invalid("the value is negative")
	}
	return newElement(new(big.Int).Set(v))
}

func newElement(v *big.Int) (*Element, error) {
	if err := Check(v); err != nil {
		return nil, err
	}
	return &Element{v: v, wire: toWire(v)}, nil
}

// Check reports whether v is an acceptable public value: 2 ≤ v ≤ p−2 and
// the Jacobi symbol (v | p) is 1, which for a safe prime is membership in
// the order-q subgroup (v^q ≡ 1) at a fraction of the cost.
func Check(v *big.Int) error {
	if v.Cmp(big.NewInt(2)) < 0 {
		return invalid("the value is less than 2")
	}
	if v.Cmp(pMinus2) > 0 {
		return invalid("the value is greater than p−2")
	}
	if Jacobi(v) != 1 {
		return invalid("the value is not in the prime-order subgroup (its Jacobi symbol is not 1)")
	}
	return nil
}

// Wire returns the value's wire encoding.
func (e *Element) Wire() []byte { return append([]byte(nil), e.wire...) }

// Bytes returns the value as exactly Size big-endian bytes (BE in the SPEC).
func (e *Element) Bytes() []byte { return e.v.FillBytes(make([]byte, Size)) }

// Int returns the value as a big.Int the caller may modify.
func (e *Element) Int() *big.Int { return new(big.Int).Set(e.v) }

// KeyID returns the value's kid.
func (e *Element) KeyID() string { return udf.KeyID(domain, e.wire) }

// Equal reports whether e and o are the same value. Public values are not
// secret, but the comparison is constant-time so callers need not think about it.
func (e *Element) Equal(o *Element) bool {
	return subtle.ConstantTimeCompare(e.Bytes(), o.Bytes()) == 1
}

// ToWire encodes any non-negative integer in the wire form, .NET's
// BigInteger.ToByteArray: little-endian, with a trailing zero byte when the
// top bit would read as a sign. It does not validate: tests use it to
// craft values that must be refused.
func ToWire(v *big.Int) []byte { return toWire(v) }

func toWire(v *big.Int) []byte {
	be := v.Bytes()
	if len(be) == 0 {
		return []byte{0}
	}
	n := len(be)
	if be[0]&0x80 != 0 {
		n++
	}
	out := make([]byte, n)
	for i, c := range be {
		out[len(be)-1-i] = c
	}
	return out
}

// ExpPublic returns base^e mod p for a public exponent. It fails only if
// the result degenerates to 1 (e ≡ 0 mod q). bigmod's constant-time Exp is
// used because it is faster than math/big's here (its Montgomery
// multiplication is specialised for 2048 bits), not because e is secret.
func ExpPublic(base *Element, e []byte) (*Element, error) {
	s := ExpSecret(base, e)
	return inSubgroup(new(big.Int).SetBytes(s.Bytes()))
}

// MulPublic returns a·b mod p for public values. It fails if the product is
// 1, that is if b is a's inverse.
func MulPublic(a, b *Element) (*Element, error) {
	v := new(big.Int).Mul(a.v, b.v)
	return inSubgroup(v.Mod(v, p))
}

// inSubgroup wraps a value computed from valid elements by operations under
// which the order-q subgroup is closed, so the full check would be wasted
// work: the only value such a result can take that an Element may not is 1.
func inSubgroup(v *big.Int) (*Element, error) {
	if v.Cmp(one) == 0 {
		return nil, invalid("the value is 1")
	}
	return &Element{v: v, wire: toWire(v)}, nil
}

var one = big.NewInt(1)
