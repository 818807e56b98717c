//go:build ct

package group

import (
	"crypto/rand"
	"math/big"
	"testing"

	"github.com/custos-kx/custos/internal/dudect"
)

// make ct: the secret-dependent exponentiations, fixed against random
// secrets, and math/big's Exp on the same inputs as a control that must be
// caught leaking.

const ctSamples = 2000

func report(t *testing.T, r dudect.Result) {
	t.Helper()
	t.Logf("|t| = %.2f over %d samples per class (mean %s); a difference of %.2f%% would show", abs(r.T), r.Samples, r.Mean, 100*r.Detectable)
	if r.Detectable > 0.01 {
		t.Errorf("%s of sampling cannot show a 1%% difference (only %.2f%%): the machine is too noisy; run make ct on a quieter one or raise dudect.Budget", dudect.Budget, 100*r.Detectable)
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// fixedOrRandom makes the exponents: class 0 is 1 (31 zero bytes and a
// one), class 1 uniformly random.
func fixedOrRandom(n int) ([]*Scalar, func(class, i int)) {
	s := make([]*Scalar, 2*dudect.MaxScale*n)
	return s, func(class, i int) {
		if class == 0 {
			one := make([]byte, ScalarSize)
			one[ScalarSize-1] = 1
			s[i], _ = NewScalar(one)
			return
		}
		s[i], _ = GenerateScalar(rand.Reader)
	}
}

func TestConstantTimeServerNonceExp(t *testing.T) { // B^r
	t0, _ := GenerateScalar(rand.Reader)
	b := t0.Public()
	r, prepare := fixedOrRandom(ctSamples)
	res := dudect.Measure(0.01, ctSamples, 1, prepare, func(i int) { ExpScalar(b, r[i]) })
	report(t, res)
	if res.Leaks() {
		t.Errorf("B^r's time depends on r: |t| = %.2f", abs(res.T))
	}
}

func TestConstantTimeClientWeightedExp(t *testing.T) { // (R·X^e)^(n+d·c)
	t0, _ := GenerateScalar(rand.Reader)
	base := t0.Public()
	d := make([]byte, 16)
	rand.Read(d)
	n, prepN := fixedOrRandom(ctSamples)
	c, prepC := fixedOrRandom(ctSamples)
	res := dudect.Measure(0.01, ctSamples, 1, func(class, i int) { prepN(class, i); prepC(class, i) }, func(i int) {
		w := WeightedExponent(n[i], c[i], d)
		ExpSecret(base, w)
	})
	report(t, res)
	if res.Leaks() {
		t.Errorf("(n + d·c)'s exponentiation time depends on n and c: |t| = %.2f", abs(res.T))
	}
}

func TestConstantTimeFixedBase(t *testing.T) { // g^r
	r, prepare := fixedOrRandom(ctSamples)
	res := dudect.Measure(0.01, ctSamples, 1, prepare, func(i int) { expBase(r[i].b[:]) }) // g^r is public: only its computation is timed
	report(t, res)
	if res.Leaks() {
		t.Errorf("g^r's time depends on r: |t| = %.2f", abs(res.T))
	}
}

// TestConstantTimeControl runs math/big's Exp on the inputs of
// TestConstantTimeServerNonceExp: it skips the exponent's leading zeros, so
// the harness must see it.
func TestConstantTimeControl(t *testing.T) {
	t0, _ := GenerateScalar(rand.Reader)
	b := t0.Public().Int()
	r, prepare := fixedOrRandom(ctSamples)
	e := make([]*big.Int, 2*dudect.MaxScale*ctSamples)
	res := dudect.Measure(0.01, ctSamples, 1, func(class, i int) {
		prepare(class, i)
		e[i] = new(big.Int).SetBytes(r[i].Bytes())
	}, func(i int) { new(big.Int).Exp(b, e[i], p) })
	t.Logf("control, math/big Exp: |t| = %.2f", abs(res.T))
	if !res.Leaks() {
		t.Errorf("the harness did not catch math/big's variable-time Exp (|t| = %.2f)", abs(res.T))
	}
}
