//go:build ct

package jwc

import (
	"crypto/rand"
	"math"
	"strings"
	"testing"

	"github.com/custos-kx/custos/internal/dudect"
)

// TestConstantTimeMAC checks request MAC verification: a token with its
// right MAC (class 0) against the same token with a random MAC (class 1).
func TestConstantTimeMAC(t *testing.T) {
	const n = 10000
	good, _ := SignOnce(ak, tkt, TypeRequest, claims())
	cut := strings.LastIndexByte(good, '.')
	reqs := make([]*Request, 2*dudect.MaxScale*n)
	res := dudect.Measure(0.01, n, 32, func(class, i int) {
		tok := good
		if class == 1 {
			mac := make([]byte, 64)
			rand.Read(mac)
			tok = good[:cut+1] + b64.EncodeToString(mac)
		}
		reqs[i], _ = Parse(tok)
	}, func(i int) { reqs[i].jws.verify(akm) })
	t.Logf("|t| = %.2f over %d samples per class (mean %s); a difference of %.2f%% would show", math.Abs(res.T), res.Samples, res.Mean, 100*res.Detectable)
	if res.Leaks() {
		t.Errorf("MAC verification's time depends on the MAC: |t| = %.2f", math.Abs(res.T))
	}
	if res.Detectable > 0.01 {
		t.Errorf("the samples cannot show a 1%% difference")
	}
}
