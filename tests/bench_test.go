package tests

import (
	"testing"

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
	bodies, err := r.ExchangeBodies(256)
	if err != nil {
		b.Fatal(err)
	}
	r.ExchangeHandler(bodies)(b)
}

func BenchmarkClientExchange(b *testing.B) {
	newRig(b).ClientExchange(b)
}

func BenchmarkAuthenticatedHandler(b *testing.B) { newRig(b).AuthenticatedHandler(b) }

func BenchmarkPlainHandler(b *testing.B) { newRig(b).PlainHandler(b) }
