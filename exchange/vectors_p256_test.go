package exchange

import (
	"bytes"
	"crypto/ecdh"
	"crypto/sha512"
	"math/rand/v2"
	"testing"

	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/ticket"
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
	vs := loadVectors(t, vectorsFileP256, genP256Vectors)
	for i, v := range vs {
		rv := v.Rekey
		checkEngine(t, i, engineCase{
			c: ecPrivate(t, v.C), n: ecPrivate(t, v.N), x: ecPrivate(t, v.X), r: ecPrivate(t, v.R),
			C: v.CPub, N: v.NPub, X: v.XPub, R: v.RPub,
			exchange: scheduleCase{v.TH, v.IKM, v.PRK, v.AK, v.EK, v.RK, v.WK, v.Ticket, v.Witness},
			enc:      v.Encryption, auth: v.Authentication, offer: v.Offer,
			n2: ecPrivate(t, rv.N), r2: ecPrivate(t, rv.R), N2: rv.NPub, R2: rv.RPub,
			rekey: scheduleCase{rv.TH, rv.IKM, rv.PRK, rv.AK, rv.EK, rv.RK, rv.WK, rv.Ticket, rv.Witness},
		})
	}
}
