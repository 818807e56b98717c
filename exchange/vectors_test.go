package exchange

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"math/big"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/kx-vectors.json from the reference implementation")

const vectorsFile = "testdata/kx-vectors.json"

// kxVector is one object of testdata/kx-vectors.json; kx-vectors.md documents it.
type kxVector struct {
	Comment        string     `json:"comment,omitempty"`
	C              string     `json:"c"`
	N              string     `json:"n"`
	X              string     `json:"x"`
	R              string     `json:"r"`
	CPub           string     `json:"C"`
	NPub           string     `json:"N"`
	XPub           string     `json:"X"`
	RPub           string     `json:"R"`
	TH             string     `json:"TH"`
	D              string     `json:"d"`
	E              string     `json:"e"`
	Sigma          string     `json:"sigma"`
	PRK            string     `json:"PRK"`
	AK             string     `json:"AK"`
	EK             string     `json:"EK"`
	RK             string     `json:"RK"`
	WK             string     `json:"WK"`
	Ticket         string     `json:"ticket"`
	Witness        string     `json:"witness"`
	Encryption     []string   `json:"encryption"`
	Authentication []string   `json:"authentication"`
	Offer          []refSuite `json:"offer"`
	Rekey          rkVector   `json:"rekey"`
}

type rkVector struct {
	N       string `json:"n"`
	R       string `json:"r"`
	NPub    string `json:"N"`
	RPub    string `json:"R"`
	TH      string `json:"TH"`
	Sigma   string `json:"sigma"`
	PRK     string `json:"PRK"`
	AK      string `json:"AK"`
	EK      string `json:"EK"`
	RK      string `json:"RK"`
	WK      string `json:"WK"`
	Ticket  string `json:"ticket"`
	Witness string `json:"witness"`
}

var defaultOffer = refSuite{Encryption: []string{A256CBCHS512}, Authentication: []string{HS512}}

// vectorOffers gives the vectors a spread of offers: none, the default, and
// the default behind suites the service does not support.
var vectorOffers = [][]refSuite{
	{},
	{defaultOffer},
	{{Encryption: []string{"A128GCM"}, Authentication: []string{"HS256"}}, defaultOffer},
	{{Encryption: []string{"A128CBC-HS256", A256CBCHS512}, Authentication: []string{"HS384", HS512}}},
}

func hx(b []byte) string { return hex.EncodeToString(b) }

func genVectors(t *testing.T) []kxVector {
	rng := rand.New(rand.NewChaCha8([32]byte{'c', 'u', 's', 't', 'o', 's'}))
	scalar := func() *big.Int {
		b := make([]byte, 32)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0] |= 0x01 // never zero; still covers a short-looking top byte below
		return new(big.Int).SetBytes(b)
	}
	fakeTicket := func() []byte {
		b := make([]byte, ticket.HeaderSize+180+ticket.TagSize)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0] = ticket.Version
		return b
	}
	var out []kxVector
	for i := 0; i < 10; i++ {
		c, n, x, r := scalar(), scalar(), scalar(), scalar()
		if i == 1 {
			c = new(big.Int).SetBytes(bytes.Repeat([]byte{0xff}, 32)) // largest n + d·c
			n = new(big.Int).Set(c)
			n.Sub(n, big.NewInt(1))
		}
		th, d, e, sc, ss := refExchange(c, n, x, r)
		if sc.Cmp(ss) != 0 {
			t.Fatal("reference client and server disagree")
		}
		k := refSchedule(make([]byte, 64), sc, th)
		offer := vectorOffers[i%len(vectorOffers)]
		tkt := fakeTicket()
		g := big.NewInt(2)
		v := kxVector{
			C: hx(refBE(c)[224:]), N: hx(refBE(n)[224:]), X: hx(refBE(x)[224:]), R: hx(refBE(r)[224:]),
			CPub: hx(refBE(refExp(g, c))), NPub: hx(refBE(refExp(g, n))), XPub: hx(refBE(refExp(g, x))), RPub: hx(refBE(refExp(g, r))),
			TH: hx(th), D: hx(d.Bytes()), E: hx(e.Bytes()), Sigma: hx(refBE(sc)),
			PRK: hx(k.PRK), AK: hx(k.AK), EK: hx(k.EK), RK: hx(k.RK), WK: hx(k.WK),
			Ticket: hx(tkt), Witness: hx(refWitness(k.WK, tkt, A256CBCHS512, HS512, offer)),
			Encryption: []string{A256CBCHS512}, Authentication: []string{HS512}, Offer: offer,
		}
		if i == 1 {
			v.Comment = "c = 2^256−1 and n = c−1: the largest weighted exponent n + d·c"
		}
		n2, r2 := scalar(), scalar()
		rth, rsc, rss := refRekey(n2, r2, tkt)
		if rsc.Cmp(rss) != 0 {
			t.Fatal("reference rekey sides disagree")
		}
		rk := refSchedule(k.RK, rsc, rth)
		tkt2 := fakeTicket()
		v.Rekey = rkVector{
			N: hx(refBE(n2)[224:]), R: hx(refBE(r2)[224:]),
			NPub: hx(refBE(refExp(g, n2))), RPub: hx(refBE(refExp(g, r2))),
			TH: hx(rth), Sigma: hx(refBE(rsc)),
			PRK: hx(rk.PRK), AK: hx(rk.AK), EK: hx(rk.EK), RK: hx(rk.RK), WK: hx(rk.WK),
			Ticket: hx(tkt2), Witness: hx(refWitness(rk.WK, tkt2, A256CBCHS512, HS512, offer)),
		}
		out = append(out, v)
	}
	return out
}

func loadVectors(t *testing.T) []kxVector {
	t.Helper()
	if *update {
		b, err := json.MarshalIndent(genVectors(t), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsFile, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var vs []kxVector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 8 {
		t.Fatalf("%s has %d vectors, want at least 8", vectorsFile, len(vs))
	}
	return vs
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func scalarOf(t *testing.T, s string) *group.Scalar {
	t.Helper()
	sc, err := group.NewScalar(unhex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

// dhPrivate is the group-14 private key of a vector's hex exponent.
func dhPrivate(t *testing.T, s string) *privateKey {
	t.Helper()
	sc := scalarOf(t, s)
	return &privateKey{dh: sc, pub: DHKey(sc.Public())}
}

func toWireOffer(o []refSuite) []wire.Suite {
	if len(o) == 0 {
		return nil
	}
	out := make([]wire.Suite, len(o))
	for i, s := range o {
		out[i] = wire.Suite(s)
	}
	return out
}

func check(t *testing.T, i int, field string, got []byte, want string) {
	t.Helper()
	if hx(got) != want {
		t.Errorf("vector %d: %s = %s, want %s", i, field, hx(got), want)
	}
}

// TestKXVectors checks the committed vectors twice: against the reference
// implementation (so the file is right) and against the engine (so the engine
// is right), field by field.
func TestKXVectors(t *testing.T) {
	vs := loadVectors(t)
	if !*update {
		want, _ := json.Marshal(genVectors(t))
		got, _ := json.Marshal(vs)
		if !bytes.Equal(want, got) {
			t.Fatalf("%s differs from what the reference implementation produces; run go test ./exchange -run TestKXVectors -update", vectorsFile)
		}
	}
	ctx := context.Background()
	for i, v := range vs {
		c, n, x, r := dhPrivate(t, v.C), dhPrivate(t, v.N), dhPrivate(t, v.X), dhPrivate(t, v.R)
		check(t, i, "C", c.pub.transcriptBytes(), v.CPub)
		check(t, i, "N", n.pub.transcriptBytes(), v.NPub)
		check(t, i, "X", x.pub.transcriptBytes(), v.XPub)
		check(t, i, "R", r.pub.transcriptBytes(), v.RPub)

		sigma, th, err := clientAgree(c, n, x.pub, r.pub)
		if err != nil {
			t.Fatalf("vector %d: client: %v", i, err)
		}
		check(t, i, "TH", th, v.TH)
		check(t, i, "sigma (client)", sigma, v.Sigma)
		d, e, _ := weights(th)
		check(t, i, "d", new(big.Int).SetBytes(d).Bytes(), v.D)
		check(t, i, "e", new(big.Int).SetBytes(e).Bytes(), v.E)

		ks := newMemKeystore(t)
		ks.AddCredential(x.dh)
		sigmaS, _, err := serverAgree(ctx, ks, c.pub, n.pub, x.pub, r)
		if err != nil {
			t.Fatalf("vector %d: server: %v", i, err)
		}
		check(t, i, "sigma (server)", sigmaS, v.Sigma)

		k := schedule(zeroSalt, sigma, th)
		check(t, i, "PRK", k.prk[:], v.PRK)
		check(t, i, "AK", k.ak[:], v.AK)
		check(t, i, "EK", k.ek[:], v.EK)
		check(t, i, "RK", k.rk[:], v.RK)
		check(t, i, "WK", k.wk[:], v.WK)
		offer := toWireOffer(v.Offer)
		check(t, i, "witness", witness(k.wk[:], unhex(t, v.Ticket), DefaultSuite, offer), v.Witness)

		// The client engine accepts the vector's response and derives its keys.
		p := &PendingExchange{key: &ClientKey{k: c}, n: n, offer: offer}
		sess, err := p.Finish(&wire.ExchangeResponse{
			Status: 201, Ticket: unhex(t, v.Ticket), Witness: unhex(t, v.Witness),
			ServerCredential: EncodeKey(x.pub), ServerNonce: EncodeKey(r.pub),
			Encryption: v.Encryption, Authentication: v.Authentication,
		})
		if err != nil {
			t.Fatalf("vector %d: client Finish: %v", i, err)
		}
		check(t, i, "session AK", sess.AK[:], v.AK)

		rv := v.Rekey
		n2, r2 := dhPrivate(t, rv.N), dhPrivate(t, rv.R)
		check(t, i, "rekey N", n2.pub.transcriptBytes(), rv.NPub)
		check(t, i, "rekey R", r2.pub.transcriptBytes(), rv.RPub)
		rth := rekeyTranscript(n2.pub, r2.pub, unhex(t, v.Ticket))
		check(t, i, "rekey TH", rth, rv.TH)
		rs, _ := rekeyAgree(n2.pub, r2)
		check(t, i, "rekey sigma (server)", rs, rv.Sigma)
		rk := schedule(k.rk[:], rs, rth)
		check(t, i, "rekey PRK", rk.prk[:], rv.PRK)
		check(t, i, "rekey AK", rk.ak[:], rv.AK)
		check(t, i, "rekey EK", rk.ek[:], rv.EK)
		check(t, i, "rekey RK", rk.rk[:], rv.RK)
		check(t, i, "rekey WK", rk.wk[:], rv.WK)

		pr := &PendingRekey{old: sess, n: n2, offer: offer}
		sess2, err := pr.Finish(&wire.ExchangeResponse{
			Status: 201, Ticket: unhex(t, rv.Ticket), Witness: unhex(t, rv.Witness),
			ServerNonce: EncodeKey(r2.pub), Encryption: v.Encryption, Authentication: v.Authentication,
		})
		if err != nil {
			t.Fatalf("vector %d: client rekey Finish: %v", i, err)
		}
		check(t, i, "rekey session RK", sess2.RK[:], rv.RK)
	}
}
