package group

import (
	"crypto/rand"
	"math/big"
	"testing"
)

// Each primitive is measured beside the math/big computation of the same
// value, so the cost of constant time is visible in one run.

func benchOperands(b *testing.B) (*Element, *Scalar) {
	s, _ := GenerateScalar(rand.Reader)
	t, _ := GenerateScalar(rand.Reader)
	return t.Public(), s
}

func BenchmarkExp256(b *testing.B) {
	base, s := benchOperands(b)
	b.Run("bigmod", func(b *testing.B) {
		for b.Loop() {
			ExpScalar(base, s)
		}
	})
	b.Run("math-big", func(b *testing.B) {
		e := new(big.Int).SetBytes(s.Bytes())
		for b.Loop() {
			new(big.Int).Exp(base.v, e, p)
		}
	})
}

func BenchmarkExpBase256(b *testing.B) {
	_, s := benchOperands(b)
	b.Run("bigmod", func(b *testing.B) {
		for b.Loop() {
			s.Public()
		}
	})
	b.Run("math-big", func(b *testing.B) {
		e := new(big.Int).SetBytes(s.Bytes())
		for b.Loop() {
			new(big.Int).Exp(big.NewInt(2), e, p)
		}
	})
}

func BenchmarkExpWeighted392(b *testing.B) {
	base, _ := benchOperands(b)
	e := make([]byte, weightedSize)
	rand.Read(e)
	b.Run("bigmod", func(b *testing.B) {
		for b.Loop() {
			ExpSecret(base, e)
		}
	})
	b.Run("math-big", func(b *testing.B) {
		ei := new(big.Int).SetBytes(e)
		for b.Loop() {
			new(big.Int).Exp(base.v, ei, p)
		}
	})
}

// BenchmarkExpPublic128 is the variable-time exponentiation by a 128-bit
// weight (C^d, B^e, X^e).
func BenchmarkExpPublic128(b *testing.B) {
	base, _ := benchOperands(b)
	e := make([]byte, 16)
	rand.Read(e)
	b.Run("current", func(b *testing.B) {
		for b.Loop() {
			ExpPublic(base, e)
		}
	})
	b.Run("bigmod", func(b *testing.B) {
		for b.Loop() {
			ExpSecret(base, e)
		}
	})
	b.Run("math-big", func(b *testing.B) {
		ei := new(big.Int).SetBytes(e)
		for b.Loop() {
			new(big.Int).Exp(base.v, ei, p)
		}
	})
}

func BenchmarkJacobi(b *testing.B) {
	base, _ := benchOperands(b)
	b.Run("divsteps", func(b *testing.B) {
		for b.Loop() {
			Jacobi(base.v)
		}
	})
	b.Run("math-big", func(b *testing.B) {
		for b.Loop() {
			big.Jacobi(base.v, p)
		}
	})
	b.Run("euler-criterion", func(b *testing.B) { // what Jacobi replaces: y^q mod p
		for b.Loop() {
			new(big.Int).Exp(base.v, q, p)
		}
	})
}

func BenchmarkDecodeWire(b *testing.B) {
	base, _ := benchOperands(b)
	w := base.Wire()
	for b.Loop() {
		if _, err := DecodeWire(w); err != nil {
			b.Fatal(err)
		}
	}
}
