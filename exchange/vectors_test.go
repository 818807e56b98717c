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

// loadVectors reads a vector file, after writing it from gen with -update.
// The test then holds the file to what gen makes, so that a file edited by
// hand, or a reference changed without -update, fails.
func loadVectors[V any](t *testing.T, file string, gen func(*testing.T) []V) []V {
	t.Helper()
	if *update {
		b, err := json.MarshalIndent(gen(t), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var vs []V
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 8 {
		t.Fatalf("%s has %d vectors, want at least 8", file, len(vs))
	}
	if want, _ := json.Marshal(gen(t)); !bytes.Equal(want, mustJSON(t, vs)) {
		t.Fatalf("%s differs from what its reference computation produces; run go test ./exchange -run '^TestKX' -update", file)
	}
	return vs
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
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
	vs := loadVectors(t, vectorsFile, genVectors)
	for i, v := range vs {
		c, n := dhPrivate(t, v.C), dhPrivate(t, v.N)
		th := transcript(c.pub, n.pub, dhPrivate(t, v.X).pub, dhPrivate(t, v.R).pub)
		d, e, _ := weights(th)
		check(t, i, "d", new(big.Int).SetBytes(d).Bytes(), v.D)
		check(t, i, "e", new(big.Int).SetBytes(e).Bytes(), v.E)
		rv := v.Rekey
		checkEngine(t, i, engineCase{
			c: c, n: n, x: dhPrivate(t, v.X), r: dhPrivate(t, v.R),
			C: v.CPub, N: v.NPub, X: v.XPub, R: v.RPub,
			exchange: scheduleCase{v.TH, v.Sigma, v.PRK, v.AK, v.EK, v.RK, v.WK, v.Ticket, v.Witness},
			enc:      v.Encryption, auth: v.Authentication, offer: v.Offer,
			n2: dhPrivate(t, rv.N), r2: dhPrivate(t, rv.R), N2: rv.NPub, R2: rv.RPub,
			rekey: scheduleCase{rv.TH, rv.Sigma, rv.PRK, rv.AK, rv.EK, rv.RK, rv.WK, rv.Ticket, rv.Witness},
		})
	}
}

// scheduleCase is what a vector gives for one exchange or rekey: the
// transcript hash, IKM (σ for group 14), the schedule, a ticket and its
// witness.
type scheduleCase struct{ th, ikm, prk, ak, ek, rk, wk, ticket, witness string }

// engineCase is one vector of either profile as the engine sees it: the
// private keys of an exchange and its rekey, the public keys and schedule
// each must give, and the algorithms.
type engineCase struct {
	c, n, x, r, n2, r2 *privateKey
	C, N, X, R, N2, R2 string
	exchange, rekey    scheduleCase
	enc, auth          []string
	offer              []refSuite
}

// checkEngine runs a vector through the engine, both sides, field by
// field: the agreement, the schedule, the witness, the client's Finish,
// then the rekey of the session it made.
func checkEngine(t *testing.T, i int, v engineCase) {
	t.Helper()
	ctx := context.Background()
	for _, k := range []struct {
		name string
		key  *privateKey
		want string
	}{{"C", v.c, v.C}, {"N", v.n, v.N}, {"X", v.x, v.X}, {"R", v.r, v.R}, {"rekey N", v.n2, v.N2}, {"rekey R", v.r2, v.R2}} {
		check(t, i, k.name, k.key.pub.transcriptBytes(), k.want)
	}
	ex := v.exchange
	ikm, th, err := clientAgree(v.c, v.n, v.x.pub, v.r.pub)
	if err != nil {
		t.Fatalf("vector %d: client: %v", i, err)
	}
	check(t, i, "TH", th, ex.th)
	check(t, i, "IKM (client)", ikm, ex.ikm)
	ks := newMemKeystore(t)
	ks.add(v.x)
	ikmS, thS, err := serverAgree(ctx, newCPUSlots(0), ks, v.c.pub, v.n.pub, v.x.pub, v.r)
	if err != nil {
		t.Fatalf("vector %d: server: %v", i, err)
	}
	check(t, i, "IKM (server)", ikmS, ex.ikm)
	check(t, i, "TH (server)", thS, ex.th)
	k := schedule(zeroSalt, ikm, th)
	checkSchedule(t, i, "", k, ex)
	offer := toWireOffer(v.offer)
	check(t, i, "witness", witness(k.wk[:], unhex(t, ex.ticket), DefaultSuite, offer), ex.witness)

	p := &PendingExchange{key: &ClientKey{k: v.c}, n: v.n, offer: offer}
	sess, err := p.Finish(&wire.ExchangeResponse{
		Status: 201, Ticket: unhex(t, ex.ticket), Witness: unhex(t, ex.witness),
		ServerCredential: EncodeKey(v.x.pub), ServerNonce: EncodeKey(v.r.pub),
		Encryption: v.enc, Authentication: v.auth,
	})
	if err != nil {
		t.Fatalf("vector %d: client Finish: %v", i, err)
	}
	check(t, i, "session AK", sess.AK[:], ex.ak)
	check(t, i, "session EK", sess.EK[:], ex.ek)

	rk := v.rekey
	rth := rekeyTranscript(v.n2.pub, v.r2.pub, unhex(t, ex.ticket))
	check(t, i, "rekey TH", rth, rk.th)
	rs, _ := rekeyAgree(v.n2.pub, v.r2)
	check(t, i, "rekey IKM (server)", rs, rk.ikm)
	rc, _ := rekeyAgree(v.r2.pub, v.n2)
	check(t, i, "rekey IKM (client)", rc, rk.ikm)
	checkSchedule(t, i, "rekey ", schedule(k.rk[:], rs, rth), rk)
	pr := &PendingRekey{old: sess, n: v.n2, offer: offer}
	sess2, err := pr.Finish(&wire.ExchangeResponse{
		Status: 201, Ticket: unhex(t, rk.ticket), Witness: unhex(t, rk.witness),
		ServerNonce: EncodeKey(v.r2.pub), Encryption: v.enc, Authentication: v.auth,
	})
	if err != nil {
		t.Fatalf("vector %d: client rekey Finish: %v", i, err)
	}
	check(t, i, "rekey session RK", sess2.RK[:], rk.rk)
}

func checkSchedule(t *testing.T, i int, prefix string, k *keys, want scheduleCase) {
	t.Helper()
	check(t, i, prefix+"PRK", k.prk[:], want.prk)
	check(t, i, prefix+"AK", k.ak[:], want.ak)
	check(t, i, prefix+"EK", k.ek[:], want.ek)
	check(t, i, prefix+"RK", k.rk[:], want.rk)
	check(t, i, prefix+"WK", k.wk[:], want.wk)
}
