package tests

import (
	"testing"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/tests/benchkit"
)

// go test -run '^$' -bench . ./tests measures the exchange through the real
// HTTP handler and token, and the client's side; make bench prints these
// with everything else in one table (tests/benchtable).

func newRig(b *testing.B) *benchkit.Rig {
	r, err := benchkit.NewRig(b.TempDir())
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(r.Close)
	return r
}

func BenchmarkExchangeHandler(b *testing.B) {
	r := newRig(b)
	for name, key := range map[string]*exchange.ClientKey{"modp2048": r.Key, "p256": r.KeyP256} {
		bodies, err := benchkit.ExchangeBodies(key, 256)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, r.ExchangeHandler(bodies))
	}
}

func BenchmarkClientExchange(b *testing.B) {
	r := newRig(b)
	b.Run("modp2048", r.ClientExchange(r.Key))
	b.Run("p256", r.ClientExchange(r.KeyP256))
}

func BenchmarkAuthenticatedHandler(b *testing.B) { newRig(b).AuthenticatedHandler(b) }

func BenchmarkPlainHandler(b *testing.B) { newRig(b).PlainHandler(b) }
