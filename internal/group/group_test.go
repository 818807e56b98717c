package group

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"math/big"
	mrand "math/rand/v2"
	"testing"
)

func TestDomain(t *testing.T) {
	d := Domain()
	want := []byte{0x60, 0x4e, 0x9b, 0x9e, 0xad, 0x4c, 0x95, 0x7e, 0x68, 0x8d, 0xa2, 0x6d, 0xa3, 0xa3, 0xcb, 0x3f, 0xf3, 0xc4, 0xc0}
	if !bytes.Equal(d[:], want) {
		t.Fatalf("Domain = %x", d)
	}
	if base64.RawURLEncoding.EncodeToString(d[:]) != "YE6bnq1MlX5ojaJto6PLP_PEwA" {
		t.Fatal("Domain does not encode as in the example")
	}
	if new(big.Int).Lsh(q, 1).Add(new(big.Int).Lsh(q, 1), big.NewInt(1)).Cmp(p) != 0 || !q.ProbablyPrime(20) {
		t.Fatal("p is not 2q+1 with q prime")
	}
}

// le encodes v as the wire form, written out here without toWire.
func le(v *big.Int) []byte {
	be := v.Bytes()
	out := make([]byte, 0, len(be)+1)
	for i := len(be) - 1; i >= 0; i-- {
		out = append(out, be[i])
	}
	if len(out) == 0 || out[len(out)-1]&0x80 != 0 {
		out = append(out, 0)
	}
	return out
}

func TestRejections(t *testing.T) {
	one := big.NewInt(1)
	valid := new(big.Int).Exp(big.NewInt(2), big.NewInt(12345), p)
	// A quadratic non-residue: p−1 is one (p ≡ 3 mod 4); so is any −g^k.
	qnr := new(big.Int).Sub(p, valid)
	cases := map[string][]byte{
		"zero":           le(big.NewInt(0)),
		"one":            le(one),
		"p-1":            le(new(big.Int).Sub(p, one)),
		"p":              le(p),
		"p+1":            le(new(big.Int).Add(p, one)),
		"non-residue":    le(qnr),
		"negative":       append(le(valid)[:Size], 0xff),
		"non-minimal":    append(le(valid), 0, 0),
		"258 bytes":      append(le(valid), make([]byte, MaxWireSize+1-len(le(valid)))...),
		"empty":          {},
		"negative short": {0x80},
	}
	for name, b := range cases {
		_, err := DecodeWire(b)
		var ie *InvalidError
		if !errors.As(err, &ie) {
			t.Errorf("%s: err = %v, want *InvalidError", name, err)
		}
	}
	if Jacobi(qnr) != -1 {
		t.Fatal("test value is not a non-residue")
	}
	if _, err := DecodeWire(le(valid)); err != nil {
		t.Fatalf("valid element refused: %v", err)
	}
}

func TestWireRoundTrip(t *testing.T) {
	for i := 0; i < 200; i++ {
		s, _ := GenerateScalar(rand.Reader)
		e := s.Public()
		want := new(big.Int).Exp(big.NewInt(2), new(big.Int).SetBytes(s.Bytes()), p)
		if e.Int().Cmp(want) != 0 {
			t.Fatal("Public() differs from math/big")
		}
		if !bytes.Equal(e.Wire(), le(want)) {
			t.Fatal("Wire() differs from the .NET encoding")
		}
		d, err := DecodeWire(e.Wire())
		if err != nil || !d.Equal(e) {
			t.Fatalf("round trip failed: %v", err)
		}
	}
}

func TestWeightedExponent(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	max := func() []byte { return bytes.Repeat([]byte{0xff}, 32) }
	for i := 0; i < 500; i++ {
		nb, cb, db := make([]byte, 32), make([]byte, 32), make([]byte, 16)
		for _, b := range [][]byte{nb, cb, db} {
			for j := range b {
				b[j] = byte(r.Uint32())
			}
		}
		if i == 0 {
			nb, cb, db = max(), max(), bytes.Repeat([]byte{0xff}, 16)
		}
		n, _ := NewScalar(nb)
		c, _ := NewScalar(cb)
		got := WeightedExponent(n, c, db)
		want := new(big.Int).Mul(new(big.Int).SetBytes(db), new(big.Int).SetBytes(cb))
		want.Add(want, new(big.Int).SetBytes(nb))
		if new(big.Int).SetBytes(got).Cmp(want) != 0 {
			t.Fatalf("n + d·c wrong for n=%x c=%x d=%x", nb, cb, db)
		}
	}
}

func TestSecretArithmetic(t *testing.T) {
	s, _ := GenerateScalar(rand.Reader)
	base := s.Public()
	e := make([]byte, 49)
	rand.Read(e)
	got := ExpSecret(base, e)
	want := new(big.Int).Exp(base.Int(), new(big.Int).SetBytes(e), p)
	if new(big.Int).SetBytes(got.Bytes()).Cmp(want) != 0 {
		t.Fatal("ExpSecret differs from math/big")
	}
	other, _ := NewSecret(base.Bytes())
	got.Mul(other)
	want.Mul(want, base.Int()).Mod(want, p)
	if new(big.Int).SetBytes(got.Bytes()).Cmp(want) != 0 {
		t.Fatal("Mul differs from math/big")
	}
	for _, v := range []*big.Int{big.NewInt(0), big.NewInt(1), new(big.Int).Sub(p, big.NewInt(1))} {
		d, _ := NewSecret(v.Bytes())
		if !d.Degenerate() {
			t.Errorf("%v not reported degenerate", v)
		}
	}
	if got.Degenerate() {
		t.Error("random value reported degenerate")
	}
	got.Zero()
	if new(big.Int).SetBytes(got.Bytes()).Sign() != 0 {
		t.Error("Zero left a value")
	}
	if _, err := NewSecret(p.Bytes()); err == nil {
		t.Error("NewSecret accepted p")
	}
}

func TestScalar(t *testing.T) {
	if _, err := NewScalar(make([]byte, 32)); err == nil {
		t.Error("zero exponent accepted")
	}
	if _, err := NewScalar(make([]byte, 31)); err == nil {
		t.Error("short exponent accepted")
	}
	// A reader that yields a zero block first must not produce a zero exponent.
	src := bytes.NewReader(append(make([]byte, 32), bytes.Repeat([]byte{7}, 32)...))
	s, err := GenerateScalar(src)
	if err != nil || s.Bytes()[0] != 7 {
		t.Fatalf("GenerateScalar did not skip zero: %v", err)
	}
	s.Zero()
	if !s.isZero() {
		t.Error("Zero left bytes")
	}
}
