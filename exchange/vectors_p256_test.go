package exchange

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/sha512"
	"encoding/json"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

const vectorsFileP256 = "testdata/kx-p256-vectors.json"

// kxP256Vector is one object of testdata/kx-p256-vectors.json, documented
// in kx-vectors.md: an exchange of SPEC §9 and one rekey of its session.
type kxP256Vector struct {
	C              string       `json:"c"`
	N              string       `json:"n"`
	X              string       `json:"x"`
	R              string       `json:"r"`
	CPub           string       `json:"C"`
	NPub           string       `json:"N"`
	XPub           string       `json:"X"`
	RPub           string       `json:"R"`
	TH             string       `json:"TH"`
	IKM            string       `json:"IKM"`
	PRK            string       `json:"PRK"`
	AK             string       `json:"AK"`
	EK             string       `json:"EK"`
	RK             string       `json:"RK"`
	WK             string       `json:"WK"`
	Ticket         string       `json:"ticket"`
	Witness        string       `json:"witness"`
	Encryption     []string     `json:"encryption"`
	Authentication []string     `json:"authentication"`
	Offer          []refSuite   `json:"offer"`
	Rekey          rkP256Vector `json:"rekey"`
}

type rkP256Vector struct {
	N       string `json:"n"`
	R       string `json:"r"`
	NPub    string `json:"N"`
	RPub    string `json:"R"`
	TH      string `json:"TH"`
	IKM     string `json:"IKM"`
	PRK     string `json:"PRK"`
	AK      string `json:"AK"`
	EK      string `json:"EK"`
	RK      string `json:"RK"`
	WK      string `json:"WK"`
	Ticket  string `json:"ticket"`
	Witness string `json:"witness"`
}

// The reference P-256 computation: crypto/ecdh and the reference schedule
// and witness, written from SPEC §9 and sharing no code with the engine.

func refDH(priv *ecdh.PrivateKey, pub *ecdh.PublicKey) []byte {
	v, err := priv.ECDH(pub)
	if err != nil {
		panic(err)
	}
	return v
}

func refTranscriptP256(label string, parts ...[]byte) []byte {
	h := sha512.New()
	h.Write([]byte(label))
	h.Write([]byte{0})
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

func genP256Vectors(t *testing.T) []kxP256Vector {
	rng := rand.New(rand.NewChaCha8([32]byte{'c', 'u', 's', 't', 'o', 's', '-', 'p', '2', '5', '6'}))
	key := func() *ecdh.PrivateKey {
		for {
			b := make([]byte, 32)
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			if k, err := ecdh.P256().NewPrivateKey(b); err == nil {
				return k
			}
		}
	}
	fixed := func(h string) *ecdh.PrivateKey {
		k, err := ecdh.P256().NewPrivateKey(unhex(t, h))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	fakeTicket := func() []byte {
		b := make([]byte, ticket.HeaderSize+180+ticket.TagSize)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0] = ticket.Version
		return b
	}
	pub := func(k *ecdh.PrivateKey) []byte { return k.PublicKey().Bytes() }
	var out []kxP256Vector
	for i := 0; i < 10; i++ {
		c, n, x, r := key(), key(), key(), key()
		if i == 1 { // C is the generator, N its negation (kx-vectors.md)
			c = fixed("0000000000000000000000000000000000000000000000000000000000000001")
			n = fixed("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550")
		}
		th := refTranscriptP256(exchangeLabelP256, pub(c), pub(n), pub(x), pub(r))
		client := bytes.Join([][]byte{refDH(n, r.PublicKey()), refDH(n, x.PublicKey()), refDH(c, r.PublicKey())}, nil)
		server := bytes.Join([][]byte{refDH(r, n.PublicKey()), refDH(x, n.PublicKey()), refDH(r, c.PublicKey())}, nil)
		if !bytes.Equal(client, server) {
			t.Fatal("reference client and server disagree")
		}
		k := refScheduleIKM(make([]byte, 64), client, th)
		offer := vectorOffers[i%len(vectorOffers)]
		tkt := fakeTicket()
		v := kxP256Vector{
			C: hx(c.Bytes()), N: hx(n.Bytes()), X: hx(x.Bytes()), R: hx(r.Bytes()),
			CPub: hx(pub(c)), NPub: hx(pub(n)), XPub: hx(pub(x)), RPub: hx(pub(r)),
			TH: hx(th), IKM: hx(client),
			PRK: hx(k.PRK), AK: hx(k.AK), EK: hx(k.EK), RK: hx(k.RK), WK: hx(k.WK),
			Ticket: hx(tkt), Witness: hx(refWitness(k.WK, tkt, A256CBCHS512, HS512, offer)),
			Encryption: []string{A256CBCHS512}, Authentication: []string{HS512}, Offer: offer,
		}
		n2, r2 := key(), key()
		oldHash := sha512.Sum512(tkt)
		rth := refTranscriptP256(rekeyLabelP256, pub(n2), pub(r2), oldHash[:])
		rikm := refDH(n2, r2.PublicKey())
		if !bytes.Equal(rikm, refDH(r2, n2.PublicKey())) {
			t.Fatal("reference rekey sides disagree")
		}
		rk := refScheduleIKM(k.RK, rikm, rth)
		tkt2 := fakeTicket()
		v.Rekey = rkP256Vector{
			N: hx(n2.Bytes()), R: hx(r2.Bytes()), NPub: hx(pub(n2)), RPub: hx(pub(r2)),
			TH: hx(rth), IKM: hx(rikm),
			PRK: hx(rk.PRK), AK: hx(rk.AK), EK: hx(rk.EK), RK: hx(rk.RK), WK: hx(rk.WK),
			Ticket: hx(tkt2), Witness: hx(refWitness(rk.WK, tkt2, A256CBCHS512, HS512, offer)),
		}
		out = append(out, v)
	}
	return out
}

func loadP256Vectors(t *testing.T) []kxP256Vector {
	t.Helper()
	if *update {
		b, err := json.MarshalIndent(genP256Vectors(t), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsFileP256, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(vectorsFileP256)
	if err != nil {
		t.Fatal(err)
	}
	var vs []kxP256Vector
	if err := json.Unmarshal(b, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) < 8 {
		t.Fatalf("%s has %d vectors, want at least 8", vectorsFileP256, len(vs))
	}
	return vs
}

// ecPrivate is the P-256 private key of a vector's hex scalar.
func ecPrivate(t *testing.T, s string) *privateKey {
	t.Helper()
	sc, err := p256.NewScalar(unhex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return &privateKey{ec: sc, pub: ECDHKey(sc.Public())}
}

// TestKXP256Vectors checks the committed P-256 vectors against the
// reference computation (so the file is right) and then the engine against
// every field (so the engine is right).
func TestKXP256Vectors(t *testing.T) {
	vs := loadP256Vectors(t)
	if !*update {
		want, _ := json.Marshal(genP256Vectors(t))
		got, _ := json.Marshal(vs)
		if !bytes.Equal(want, got) {
			t.Fatalf("%s differs from what the reference computation produces; run go test ./exchange -run TestKXP256Vectors -update", vectorsFileP256)
		}
	}
	ctx := context.Background()
	for i, v := range vs {
		c, n, x, r := ecPrivate(t, v.C), ecPrivate(t, v.N), ecPrivate(t, v.X), ecPrivate(t, v.R)
		check(t, i, "C", c.pub.transcriptBytes(), v.CPub)
		check(t, i, "N", n.pub.transcriptBytes(), v.NPub)
		check(t, i, "X", x.pub.transcriptBytes(), v.XPub)
		check(t, i, "R", r.pub.transcriptBytes(), v.RPub)

		ikm, th, err := clientAgree(c, n, x.pub, r.pub)
		if err != nil {
			t.Fatalf("vector %d: client: %v", i, err)
		}
		check(t, i, "TH", th, v.TH)
		check(t, i, "IKM (client)", ikm, v.IKM)

		ks := newMemKeystore(t)
		ks.AddCredentialP256(x.ec)
		ikmS, thS, err := serverAgree(ctx, ks, c.pub, n.pub, x.pub, r)
		if err != nil {
			t.Fatalf("vector %d: server: %v", i, err)
		}
		check(t, i, "IKM (server)", ikmS, v.IKM)
		check(t, i, "TH (server)", thS, v.TH)

		k := schedule(zeroSalt, ikm, th)
		check(t, i, "PRK", k.prk[:], v.PRK)
		check(t, i, "AK", k.ak[:], v.AK)
		check(t, i, "EK", k.ek[:], v.EK)
		check(t, i, "RK", k.rk[:], v.RK)
		check(t, i, "WK", k.wk[:], v.WK)
		offer := toWireOffer(v.Offer)
		check(t, i, "witness", witness(k.wk[:], unhex(t, v.Ticket), DefaultSuite, offer), v.Witness)

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
		check(t, i, "session EK", sess.EK[:], v.EK)

		rv := v.Rekey
		n2, r2 := ecPrivate(t, rv.N), ecPrivate(t, rv.R)
		check(t, i, "rekey N", n2.pub.transcriptBytes(), rv.NPub)
		check(t, i, "rekey R", r2.pub.transcriptBytes(), rv.RPub)
		rth := rekeyTranscript(n2.pub, r2.pub, unhex(t, v.Ticket))
		check(t, i, "rekey TH", rth, rv.TH)
		rs, _ := rekeyAgree(n2.pub, r2)
		check(t, i, "rekey IKM (server)", rs, rv.IKM)
		rc, _ := rekeyAgree(r2.pub, n2)
		check(t, i, "rekey IKM (client)", rc, rv.IKM)
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
