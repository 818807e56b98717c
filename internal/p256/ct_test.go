//go:build ct

package p256

import (
	"crypto/rand"
	"math"
	"testing"

	"github.com/custos-kx/custos/internal/dudect"
)

// make ct for the P-256 profile: the server's r·G and DH(r, ·), and the
// client's three DH values, each with a fixed secret (1) against random
// ones. crypto/ecdh promises constant time; this checks the way Custos
// calls it keeps that.

const ctSamples = 4000

func report(t *testing.T, what string, r dudect.Result) {
	t.Helper()
	t.Logf("|t| = %.2f over %d samples per class (mean %s); a difference of %.2f%% would show", math.Abs(r.T), r.Samples, r.Mean, 100*r.Detectable)
	if r.Detectable > 0.01 {
		t.Errorf("%s of sampling cannot show a 1%% difference (only %.2f%%): the machine is too noisy; run make ct on a quieter one or raise dudect.Budget", dudect.Budget, 100*r.Detectable)
	}
	if r.Leaks() {
		t.Errorf("%s's time depends on the secret: |t| = %.2f", what, math.Abs(r.T))
	}
}

// fixedOrRandom makes the secrets' bytes: class 0 is 1, class 1 random.
func fixedOrRandom(n int) ([][]byte, func(class, i int)) {
	s := make([][]byte, 2*dudect.MaxScale*n)
	return s, func(class, i int) {
		b := make([]byte, ScalarSize)
		if class == 0 {
			b[ScalarSize-1] = 1
		} else {
			for {
				rand.Read(b)
				if _, err := curve.NewPrivateKey(b); err == nil {
					break
				}
			}
		}
		s[i] = b
	}
}

func randomPoint(t *testing.T) *Point {
	k, err := GenerateScalar(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func TestConstantTimeServerNonce(t *testing.T) { // r·G, as NewScalar makes it
	r, prepare := fixedOrRandom(ctSamples)
	res := dudect.Measure(0.01, ctSamples, 1, prepare, func(i int) { curve.NewPrivateKey(r[i]) })
	report(t, "r·G", res)
}

func TestConstantTimeServerDH(t *testing.T) { // DH(r, N) and DH(r, C)
	peer := randomPoint(t)
	r, prepare := fixedOrRandom(ctSamples)
	keys := make([]*Scalar, len(r))
	res := dudect.Measure(0.01, ctSamples, 1, func(class, i int) {
		prepare(class, i)
		keys[i], _ = NewScalar(r[i])
	}, func(i int) { keys[i].DH(peer) })
	report(t, "DH(r, ·)", res)
}

func TestConstantTimeClientDH(t *testing.T) { // DH(n, R) ‖ DH(n, X) ‖ DH(c, R)
	R, X := randomPoint(t), randomPoint(t)
	n, prepN := fixedOrRandom(ctSamples)
	c, prepC := fixedOrRandom(ctSamples)
	nk, ck := make([]*Scalar, len(n)), make([]*Scalar, len(c))
	res := dudect.Measure(0.01, ctSamples, 1, func(class, i int) {
		prepN(class, i)
		prepC(class, i)
		nk[i], _ = NewScalar(n[i])
		ck[i], _ = NewScalar(c[i])
	}, func(i int) {
		nk[i].DH(R)
		nk[i].DH(X)
		ck[i].DH(R)
	})
	report(t, "the client's three DH values", res)
}
