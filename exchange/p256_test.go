package exchange

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"math/big"
	"strings"
	"testing"

	"github.com/custos-kx/custos/internal/p256"
	"github.com/custos-kx/custos/internal/wire"
)

// The P-256 profile's refusals and attacks (SPEC §9).

func validP256Request(t testing.TB) *wire.ExchangeRequest {
	key, _ := GenerateClientKey(rand.Reader, P256)
	_, m, err := key.NewExchange(rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// withPoint replaces a key's point, keeping its kid consistent with the
// point where one can be computed, so only the point itself is wrong.
func withPoint(k *wire.PublicKey, b []byte) {
	k.Public = b
	if pt, err := p256.Decode(b); err == nil {
		k.KID = pt.KeyID()
	}
}

func TestP256RequestRejections(t *testing.T) {
	good := func() []byte { k, _ := ecdh.P256().GenerateKey(rand.Reader); return k.PublicKey().Bytes() }
	dhKey, _ := GenerateClientKey(rand.Reader, ModP2048)
	dhNonce := EncodeKey(dhKey.Public())
	cases := []struct {
		name   string
		mutate func(m *wire.ExchangeRequest)
		code   Code
	}{
		{"compressed point", func(m *wire.ExchangeRequest) {
			b := good()
			withPoint(m.ClientNonce, append([]byte{2 | b[64]&1}, b[1:33]...))
		}, InvalidPublicKey},
		{"hybrid point", func(m *wire.ExchangeRequest) {
			b := good()
			b[0] = 6 | b[64]&1
			withPoint(m.ClientNonce, b)
		}, InvalidPublicKey},
		{"off the curve", func(m *wire.ExchangeRequest) { b := good(); b[64] ^= 1; withPoint(m.ClientNonce, b) }, InvalidPublicKey},
		{"x ≥ p", func(m *wire.ExchangeRequest) {
			b := good()
			copy(b[1:33], bytes.Repeat([]byte{0xff}, 32))
			withPoint(m.ClientCredential, b)
		}, InvalidPublicKey},
		{"identity", func(m *wire.ExchangeRequest) { withPoint(m.ClientNonce, []byte{0}) }, InvalidPublicKey},
		{"64 bytes", func(m *wire.ExchangeRequest) { withPoint(m.ClientNonce, good()[:64]) }, InvalidPublicKey},
		{"other curve", func(m *wire.ExchangeRequest) { m.ClientNonce.Curve = "P-384" }, UnsupportedDomain},
		{"curve in other case", func(m *wire.ExchangeRequest) { m.ClientNonce.Curve = "p-256" }, UnsupportedDomain},
		{"other curve and bad point", func(m *wire.ExchangeRequest) {
			m.ClientNonce.Curve = "secp256k1"
			m.ClientNonce.Public = []byte{2, 3}
		}, UnsupportedDomain},
		{"kid mismatch", func(m *wire.ExchangeRequest) { m.ClientCredential.KID = m.ClientNonce.KID }, KidMismatch},
		{"bad point and kid", func(m *wire.ExchangeRequest) { m.ClientNonce.Public = []byte{4, 1} }, InvalidPublicKey},
		{"C = N", func(m *wire.ExchangeRequest) { m.ClientNonce = m.ClientCredential }, InvalidPublicKey},
		{"group-14 nonce", func(m *wire.ExchangeRequest) { m.ClientNonce = dhNonce }, Malformed},
		{"group-14 credential", func(m *wire.ExchangeRequest) { m.ClientCredential = dhNonce }, Malformed},
	}
	for _, c := range cases {
		m := validP256Request(t)
		c.mutate(m)
		b, _ := json.Marshal(m)
		var decoded wire.ExchangeRequest
		err := wire.Unmarshal(b, &decoded)
		if err == nil {
			_, err = ParseRequest(&decoded)
		}
		if e := AsError(err); err == nil || e.Code != c.code || e.Description == "" {
			t.Errorf("%s: got %v, want %s", c.name, err, c.code)
		}
	}
}

func TestP256DecodeRejections(t *testing.T) {
	good, _ := json.Marshal(validP256Request(t))
	s := string(good)
	for name, body := range map[string]string{
		"crv missing":    strings.Replace(s, `"crv":"P-256",`, ``, 1),
		"crv a number":   strings.Replace(s, `"crv":"P-256"`, `"crv":256`, 1),
		"crv null":       strings.Replace(s, `"crv":"P-256"`, `"crv":null`, 1),
		"crv twice":      strings.Replace(s, `"crv":"P-256"`, `"crv":"P-256","crv":"P-256"`, 1),
		"both tags":      strings.Replace(s, `{"PublicKeyECDH":`, `{"PublicKeyDH":{},"PublicKeyECDH":`, 1),
		"tag not object": strings.Replace(s, `"ClientNonce":{"PublicKeyECDH":{`, `"ClientNonce":{"PublicKeyECDH":[{`, 1),
		"bad base64":     strings.Replace(s, `"Public":"B`, `"Public":"=B`, 1),
		"CRV is not crv": strings.Replace(s, `"crv":"P-256"`, `"CRV":"P-256"`, 1),
	} {
		var m wire.ExchangeRequest
		err := wire.Unmarshal([]byte(body), &m)
		if err == nil {
			_, err = ParseRequest(&m)
		}
		if e := AsError(err); err == nil || e.Code != Malformed {
			t.Errorf("%s: got %v, want Malformed", name, err)
		}
	}
}

// TestP256RekeyKeepsProfile: a rekey's nonce is of its session's profile.
func TestP256RekeyKeepsProfile(t *testing.T) {
	srv, _ := newServer(t)
	for _, p := range Profiles {
		key, _ := GenerateClientKey(rand.Reader, p)
		sess, _ := exchangeOnce(t, srv, key, nil)
		other := ModP2048
		if p == ModP2048 {
			other = P256
		}
		n, _ := generateKey(other, rand.Reader)
		body, _ := json.Marshal(&wire.ExchangeRequest{ClientNonce: EncodeKey(n.pub)})
		auth, _ := sess.SignRekey(body, srv.now())
		_, _, err := srv.Rekey(context.Background(), &SignedRequest{Method: "POST", Target: WellKnown, Authorization: auth, Header: RekeyHeader, Body: body}, nil)
		if e := AsError(err); e.Code != Malformed || !strings.Contains(e.Description, "keeps its session's profile") {
			t.Errorf("a %s session rekeyed with a %s nonce: %v", p, other, err)
		}
		next := rekeyOnce(t, srv, sess)
		st, _ := srv.openTicket(context.Background(), next.Ticket)
		if Profile(st.Profile) != p || next.ServerCredential.Profile() != p {
			t.Errorf("a rekeyed %s session is of profile %d", p, st.Profile)
		}
	}
}

// TestProfileNotServed: a keystore without a P-256 credential refuses
// P-256 exchanges 422 UnsupportedDomain and leaves it out of discovery.
func TestProfileNotServed(t *testing.T) {
	srv, ks := newServer(t)
	delete(ks.active, P256)
	req, err := ParseRequest(validP256Request(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = srv.Exchange(context.Background(), req, "alice@example.com")
	if e := AsError(err); e.Code != UnsupportedDomain || !strings.Contains(e.Description, "modp2048") {
		t.Fatalf("P-256 exchange with no P-256 credential: %v", err)
	}
	d, err := srv.Describe(context.Background())
	if err != nil || len(d.Credentials) != 1 || d.ServerCredential == nil {
		t.Fatalf("discovery: %+v %v", d, err)
	}
	delete(ks.active, ModP2048)
	ks.active[P256], _ = ks.Credential(context.Background(), P256)
	k, _ := generateKey(P256, rand.Reader)
	ks.add(k)
	d, err = srv.Describe(context.Background())
	if err != nil || len(d.Credentials) != 1 || d.ServerCredential != nil || d.Domain != nil || d.Credentials[0].Type != wire.KeyECDH {
		t.Fatalf("discovery of a P-256-only service: %+v %v", d, err)
	}
}

// p256Guesses are IKMs an attacker can compute who knows t for the nonce
// he sent and the public keys, but not c or x: every combination of the
// DH values he can make, in every slot.
func p256Guesses(t *testing.T, tk *ecdh.PrivateKey, known ...*ecdh.PublicKey) [][]byte {
	var parts [][]byte
	for _, k := range known {
		v, err := tk.ECDH(k)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, v, k.Bytes()[1:33])
	}
	var out [][]byte
	for _, a := range parts {
		for _, b := range parts {
			for _, c := range parts {
				out = append(out, bytes.Join([][]byte{a, b, c}, nil))
			}
		}
	}
	return out
}

// p256Attack sends an exchange as Alice with the nonce N and checks that
// none of the attacker's guesses gives the session's witness.
func p256Attack(t *testing.T, srv *Server, alice *PublicKey, nonce *ecdh.PublicKey, guess func(R, X *ecdh.PublicKey) [][]byte) {
	t.Helper()
	n, err := p256.FromECDH(nonce)
	if err != nil {
		t.Fatal(err)
	}
	req := &Request{Credential: alice, Nonce: ECDHKey(n), Suite: DefaultSuite}
	resp, err := srv.Exchange(context.Background(), req, "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	R, _ := ParseKey(resp.ServerNonce, "ServerNonce")
	X, _ := ParseKey(resp.ServerCredential, "ServerCredential")
	th := transcript(alice, req.Nonce, X, R)
	for j, ikm := range guess(R.Point().ECDH(), X.Point().ECDH()) {
		k := schedule(zeroSalt, ikm, th)
		if bytes.Equal(witness(k.wk[:], resp.Ticket, DefaultSuite, nil), resp.Witness) {
			t.Fatalf("guess %d succeeded: the attacker knows the session key", j)
		}
	}
}

// TestP256RogueNonce: the attack of SPEC §3 against this profile. Knowing
// only Alice's public C, the attacker sends N = t·G (he knows every DH with
// N) or N = t·G − C (cancelling C, were the keys combined by addition);
// DH(r, C) stays out of his reach, and no guess verifies.
func TestP256RogueNonce(t *testing.T) {
	srv, _ := newServer(t)
	alice, _ := GenerateClientKey(rand.Reader, P256)
	C := alice.Public().Point().ECDH()
	curve := elliptic.P256()
	cx, cy := new(big.Int).SetBytes(C.Bytes()[1:33]), new(big.Int).SetBytes(C.Bytes()[33:])
	for i := 0; i < 10; i++ {
		tk, _ := ecdh.P256().GenerateKey(rand.Reader)
		T := tk.PublicKey()
		p256Attack(t, srv, alice.Public(), T, func(R, X *ecdh.PublicKey) [][]byte {
			return p256Guesses(t, tk, R, X, C)
		})
		// N = T − C: the attacker does not know N's discrete log, but T's.
		tx, ty := new(big.Int).SetBytes(T.Bytes()[1:33]), new(big.Int).SetBytes(T.Bytes()[33:])
		nx, ny := curve.Add(tx, ty, cx, new(big.Int).Sub(curve.Params().P, cy))
		N, err := ecdh.P256().NewPublicKey(elliptic.Marshal(curve, nx, ny)) //nolint:staticcheck // point addition, for the attack only
		if err != nil {
			t.Fatal(err)
		}
		p256Attack(t, srv, alice.Public(), N, func(R, X *ecdh.PublicKey) [][]byte {
			return p256Guesses(t, tk, R, X, C)
		})
	}
}

// TestP256Reflection: the attacker reflects the service's own keys at it,
// its credential X as the nonce (with the victim's C) and a previous
// ServerNonce. The service refuses neither key, but the attacker knows no
// private key behind them, and no guess from what he saw verifies.
func TestP256Reflection(t *testing.T) {
	srv, _ := newServer(t)
	alice, _ := GenerateClientKey(rand.Reader, P256)
	X, _ := srv.Keystore.Credential(context.Background(), P256)
	C := alice.Public().Point().ECDH()
	first := exchangeWith(t, srv, alice)
	for _, reflected := range []*ecdh.PublicKey{X.Point().ECDH(), first} {
		tk, _ := ecdh.P256().GenerateKey(rand.Reader) // a key of his own, to mix in
		p256Attack(t, srv, alice.Public(), reflected, func(R, Xp *ecdh.PublicKey) [][]byte {
			return p256Guesses(t, tk, R, Xp, C, reflected)
		})
	}
}

// exchangeWith runs one honest exchange and returns its ServerNonce.
func exchangeWith(t *testing.T, srv *Server, key *ClientKey) *ecdh.PublicKey {
	_, resp := exchangeOnce(t, srv, key, nil)
	R, err := ParseKey(resp.ServerNonce, "ServerNonce")
	if err != nil {
		t.Fatal(err)
	}
	return R.Point().ECDH()
}
