package exchange

import (
	"context"
	"crypto/rand"
	"math/big"
	"testing"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/ticket"
)

// BenchmarkServerExchange is the service's whole exchange computation with
// an in-memory keystore: the token's derive is replaced by a 256-bit
// constant-time exponentiation, and sealing by software AES-GCM.
func BenchmarkServerExchange(b *testing.B) {
	srv, _ := newServer(b)
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	_, m, _ := key.NewExchange(rand.Reader, nil)
	req, err := ParseRequest(m)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		if _, err := srv.Exchange(ctx, req, "alice@example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServerAgreeReference computes the server's σ with math/big
// alone, as the same-run reference for the engine's constant-time version.
func BenchmarkServerAgreeReference(b *testing.B) {
	c, n, x, r := randInt(), randInt(), randInt(), randInt()
	for b.Loop() {
		refExchangeServer(c, n, x, r)
	}
}

// BenchmarkClientExchange is the client's work for one exchange: a nonce
// key, the request, and Finish (validation, σ, schedule, witness).
func BenchmarkClientExchange(b *testing.B) {
	srv, _ := newServer(b)
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	pending, m, _ := key.NewExchange(rand.Reader, nil)
	req, _ := ParseRequest(m)
	resp, err := srv.Exchange(context.Background(), req, "alice@example.com")
	if err != nil {
		b.Fatal(err)
	}
	nonce := pending.n.dh.Bytes()
	for b.Loop() {
		// A fresh nonce for each round, then the response made for the first one.
		_, _, _ = key.NewExchange(rand.Reader, nil)
		n, _ := group.NewScalar(nonce)
		p := &PendingExchange{key: key, n: &privateKey{dh: n, pub: pending.n.pub}}
		if _, err := p.Finish(resp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientAgreeReference(b *testing.B) {
	c, n, x, r := randInt(), randInt(), randInt(), randInt()
	g := big.NewInt(2)
	C, N, X, R := refExp(g, c), refExp(g, n), refExp(g, x), refExp(g, r)
	for b.Loop() {
		refExchangeClient(c, n, C, N, X, R)
	}
}

func BenchmarkSchedule(b *testing.B) {
	sigma := make([]byte, 256)
	th := make([]byte, 64)
	rand.Read(sigma)
	rand.Read(th)
	for b.Loop() {
		schedule(zeroSalt, sigma, th).zero()
	}
}

func BenchmarkMemorySeal(b *testing.B) {
	ks := newMemKeystore(b)
	pt := make([]byte, 260)
	for b.Loop() {
		ticket.Seal(context.Background(), ks, rand.Reader, pt)
	}
}

func randInt() *big.Int {
	b := make([]byte, 32)
	rand.Read(b)
	return new(big.Int).SetBytes(b)
}
