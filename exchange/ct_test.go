//go:build ct

package exchange

import (
	"crypto/rand"
	"math"
	"testing"

	"github.com/custos-kx/custos/internal/dudect"
	"github.com/custos-kx/custos/internal/wire"
)

// TestConstantTimeWitness checks the client's witness comparison: a right
// witness (class 0) against a random one (class 1).
func TestConstantTimeWitness(t *testing.T) {
	const n = 10000
	wk := make([]byte, 64)
	rand.Read(wk)
	tkt := make([]byte, 180)
	rand.Read(tkt)
	right := witness(wk, tkt, DefaultSuite, nil)
	resps := make([]*wire.ExchangeResponse, 2*dudect.MaxScale*n)
	res := dudect.Measure(0.01, n, 32, func(class, i int) {
		w := append([]byte(nil), right...)
		if class == 1 {
			rand.Read(w)
		}
		resps[i] = &wire.ExchangeResponse{Ticket: tkt, Witness: w}
	}, func(i int) { witnessOK(wk, resps[i], DefaultSuite, nil) })
	t.Logf("|t| = %.2f over %d samples per class (mean %s); a difference of %.2f%% would show", math.Abs(res.T), res.Samples, res.Mean, 100*res.Detectable)
	if res.Leaks() {
		t.Errorf("the witness check's time depends on the witness: |t| = %.2f", math.Abs(res.T))
	}
	if res.Detectable > 0.01 {
		t.Errorf("the samples cannot show a 1%% difference")
	}
}
