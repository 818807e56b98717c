package exchange

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/udf"
	"github.com/custos-kx/custos/internal/wire"
)

func newServer(t testing.TB) (*Server, *memKeystore) {
	t.Helper()
	ks := newMemKeystore(t)
	return &Server{Keystore: ks, Accounts: enabledAccounts{}}, ks
}

// exchangeOnce runs a whole exchange through the engines, as bytes on the wire.
func exchangeOnce(t testing.TB, srv *Server, key *ClientKey, offer []wire.Suite) (*Session, *wire.ExchangeResponse) {
	t.Helper()
	pending, reqMsg, err := key.NewExchange(rand.Reader, offer)
	if err != nil {
		t.Fatal(err)
	}
	var decoded wire.ExchangeRequest
	mustRecode(t, reqMsg, &decoded)
	req, err := ParseRequest(&decoded)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Exchange(context.Background(), req, "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	var got wire.ExchangeResponse
	mustRecode(t, resp, &got)
	sess, err := pending.Finish(&got)
	if err != nil {
		t.Fatal(err)
	}
	return sess, resp
}

func mustRecode(t testing.TB, in, out any) {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

// enabledAccounts is a registry in which every credential belongs to the
// enabled account alice@example.com.
type enabledAccounts struct{}

func (enabledAccounts) Owner(context.Context, string) (string, bool, error) {
	return "alice@example.com", false, nil
}

// MarkRenewed lets every ticket be renewed: these tests rekey each once.
func (enabledAccounts) MarkRenewed(context.Context, []byte, time.Time) (bool, error) {
	return true, nil
}

func rekeyOnce(t testing.TB, srv *Server, sess *Session) *Session {
	t.Helper()
	pending, reqMsg, err := sess.NewRekey(rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(reqMsg)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := sess.SignRekey(body, srv.now())
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err := srv.Rekey(context.Background(), &SignedRequest{Method: "POST", Target: WellKnown, Authorization: auth, Header: RekeyHeader, Body: body}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got wire.ExchangeResponse
	mustRecode(t, resp, &got)
	next, err := pending.Finish(&got)
	if err != nil {
		t.Fatal(err)
	}
	return next
}

// assertAgree opens the session's ticket and checks the service holds the
// same keys as the client.
func assertAgree(t testing.TB, srv *Server, sess *Session, generation uint32) {
	t.Helper()
	st, err := srv.openTicket(context.Background(), sess.Ticket)
	if err != nil {
		t.Fatal(err)
	}
	if !hmac.Equal(st.AK[:], sess.AK[:]) || !hmac.Equal(st.EK[:], sess.EK[:]) || !hmac.Equal(st.RK[:], sess.RK[:]) {
		t.Fatal("client and server keys differ")
	}
	if st.Generation != generation || st.Account != "alice@example.com" {
		t.Fatalf("ticket generation %d account %q", st.Generation, st.Account)
	}
}

func TestRandomExchangesAgree(t *testing.T) {
	srv, _ := newServer(t)
	rounds := 1000
	if testing.Short() {
		rounds = 50
	}
	seen := map[[64]byte]bool{}
	for i := 0; i < 2*rounds; i++ { // rounds of each profile
		key, _ := GenerateClientKey(rand.Reader, Profiles[i%2])
		sess, _ := exchangeOnce(t, srv, key, nil)
		assertAgree(t, srv, sess, 0)
		next := rekeyOnce(t, srv, sess)
		assertAgree(t, srv, next, 1)
		if seen[sess.AK] || seen[next.AK] || sess.AK == next.AK {
			t.Fatal("a session key repeated")
		}
		seen[sess.AK], seen[next.AK] = true, true
	}
}

func TestSessionFields(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	srv, _ := newServer(t)
	srv.Now = func() time.Time { return now }
	srv.SessionLifetime = 10 * time.Minute
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	sess, resp := exchangeOnce(t, srv, key, []wire.Suite{{Encryption: []string{"A128GCM", A256CBCHS512}, Authentication: []string{HS512}}})
	st, _ := srv.openTicket(context.Background(), sess.Ticket)
	if st.CredentialKID != key.Public().KeyID() || !st.IssuedAt.Equal(now) ||
		!st.Expires.Equal(now.Add(10*time.Minute)) || !st.RekeyExpires.Equal(now.Add(DefaultRekeyWindow)) ||
		st.Encryption != A256CBCHS512 || st.Authentication != HS512 {
		t.Fatalf("ticket contents: %+v", st)
	}
	x, _ := srv.Keystore.Credential(context.Background(), ModP2048)
	if resp.ServerCredential.KID != x.KeyID() || !sess.ServerCredential.Equal(x) {
		t.Fatal("ServerCredential is not the keystore's credential")
	}
	now = now.Add(time.Hour)
	next := rekeyOnce(t, srv, sess)
	st2, _ := srv.openTicket(context.Background(), next.Ticket)
	if !st2.RekeyExpires.Equal(st.RekeyExpires) || !st2.Expires.Equal(now.Add(10*time.Minute)) {
		t.Fatal("a rekey must keep the rekey window of the exchange and renew the session")
	}
}

func TestWitnessDetectsTampering(t *testing.T) {
	srv, _ := newServer(t)
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	tamper := map[string]func(*wire.ExchangeResponse){
		"ticket":  func(r *wire.ExchangeResponse) { r.Ticket[len(r.Ticket)-1] ^= 1 },
		"witness": func(r *wire.ExchangeResponse) { r.Witness[0] ^= 1 },
		"nonce": func(r *wire.ExchangeResponse) {
			s, _ := group.GenerateScalar(rand.Reader)
			r.ServerNonce = EncodeKey(DHKey(s.Public()))
		},
		"credential": func(r *wire.ExchangeResponse) {
			s, _ := group.GenerateScalar(rand.Reader)
			r.ServerCredential = EncodeKey(DHKey(s.Public()))
		},
	}
	for name, f := range tamper {
		pending, reqMsg, _ := key.NewExchange(rand.Reader, nil)
		req, _ := ParseRequest(reqMsg)
		resp, err := srv.Exchange(context.Background(), req, "alice@example.com")
		if err != nil {
			t.Fatal(err)
		}
		f(resp)
		if _, err := pending.Finish(resp); !errors.Is(err, ErrWitness) {
			t.Errorf("%s tampered: err = %v, want ErrWitness", name, err)
		}
	}
}

// TestRogueNonce runs the attack of SPEC §3: knowing only Alice's public C,
// the attacker sends N = g^t·C⁻¹. Against the draft's plain combination he
// learns the session key (the control below shows it); against the weighted
// one none of his candidate secrets verifies.
func TestRogueNonce(t *testing.T) {
	srv, ks := newServer(t)
	xs, _ := group.GenerateScalar(rand.Reader)
	ks.AddCredential(xs)
	alice, _ := GenerateClientKey(rand.Reader, ModP2048)
	C := alice.Public().DH().Int()
	p := group.P()

	for i := 0; i < 20; i++ {
		tb := make([]byte, 32)
		rand.Read(tb)
		tt := new(big.Int).SetBytes(tb)
		N := new(big.Int).Mul(new(big.Int).Exp(big.NewInt(2), tt, p), new(big.Int).ModInverse(C, p))
		N.Mod(N, p)
		el, err := group.NewElementInt(N)
		nEl := DHKey(el)
		if err != nil {
			t.Fatal(err) // g^t·C⁻¹ is a valid element: validation cannot stop this attack
		}
		req := &Request{Credential: alice.Public(), Nonce: nEl, Suite: DefaultSuite}
		resp, err := srv.Exchange(context.Background(), req, "alice@example.com")
		if err != nil {
			t.Fatal(err)
		}
		Rk, _ := ParseKey(resp.ServerNonce, "ServerNonce")
		Xk, _ := ParseKey(resp.ServerCredential, "ServerCredential")
		R, X := Rk.DH(), Xk.DH()
		th := transcript(alice.Public(), nEl, Xk, Rk)
		_, e, _ := weights(th)
		eInt := new(big.Int).SetBytes(e)

		// What the attacker can compute: (R·X)^t, (R·X^e)^t, R^t, (X^e)^t.
		rx := new(big.Int).Mul(R.Int(), X.Int())
		rxe := new(big.Int).Mul(R.Int(), new(big.Int).Exp(X.Int(), eInt, p))
		guesses := []*big.Int{
			new(big.Int).Exp(rx.Mod(rx, p), tt, p),
			new(big.Int).Exp(rxe.Mod(rxe, p), tt, p),
			new(big.Int).Exp(R.Int(), tt, p),
			new(big.Int).Exp(new(big.Int).Exp(X.Int(), eInt, p), tt, p),
		}
		for j, g := range guesses {
			k := schedule(zeroSalt, g.FillBytes(make([]byte, 256)), th)
			if hmac.Equal(witness(k.wk[:], resp.Ticket, DefaultSuite, nil), resp.Witness) {
				t.Fatalf("attack %d succeeded: the attacker knows the session key", j)
			}
		}

		// Control: the draft's plain combination, σ = (N·C)^(r+x) = (R·X)^t.
		// The server side computed with r and x must equal the attacker's first guess.
		r, _ := group.GenerateScalar(rand.Reader)
		Rp := r.Public().Int()
		rxp := new(big.Int).Mul(Rp, X.Int())
		attacker := new(big.Int).Exp(rxp.Mod(rxp, p), tt, p)
		nc := new(big.Int).Mul(N, C)
		exp := new(big.Int).Add(new(big.Int).SetBytes(r.Bytes()), new(big.Int).SetBytes(xs.Bytes()))
		plain := new(big.Int).Exp(nc.Mod(nc, p), exp, p)
		if plain.Cmp(attacker) != 0 {
			t.Fatal("control failed: the plain combination should fall to this attack")
		}
	}
}

// validRequest returns a request whose keys are valid, to mutate.
func validRequest(t testing.TB) *wire.ExchangeRequest {
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	_, m, err := key.NewExchange(rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// withPublic replaces a key's Public, keeping the kid consistent with it so
// that only the value itself is wrong.
func withPublic(k *wire.PublicKey, le []byte) {
	d := group.Domain()
	k.Public = le
	k.KID = udf.KeyID(d, le)
}

func le(v *big.Int) []byte {
	be := v.Bytes()
	out := make([]byte, 0, len(be)+1)
	for i := len(be) - 1; i >= 0; i-- {
		out = append(out, be[i])
	}
	if len(out) == 0 || out[len(out)-1]&0x80 != 0 {
		out = append(out, 0)
	}
	return out
}

func TestRequestRejections(t *testing.T) {
	p := group.P()
	one := big.NewInt(1)
	valid := new(big.Int).Exp(big.NewInt(2), big.NewInt(99991), p)
	cases := []struct {
		name   string
		mutate func(m *wire.ExchangeRequest)
		code   Code
	}{
		{"zero", func(m *wire.ExchangeRequest) { withPublic(m.ClientNonce, le(big.NewInt(0))) }, InvalidPublicKey},
		{"one", func(m *wire.ExchangeRequest) { withPublic(m.ClientNonce, le(one)) }, InvalidPublicKey},
		{"p-1", func(m *wire.ExchangeRequest) { withPublic(m.ClientNonce, le(new(big.Int).Sub(p, one))) }, InvalidPublicKey},
		{"p", func(m *wire.ExchangeRequest) { withPublic(m.ClientCredential, le(p)) }, InvalidPublicKey},
		{"p+1", func(m *wire.ExchangeRequest) { withPublic(m.ClientCredential, le(new(big.Int).Add(p, one))) }, InvalidPublicKey},
		{"non-residue", func(m *wire.ExchangeRequest) { withPublic(m.ClientNonce, le(new(big.Int).Sub(p, valid))) }, InvalidPublicKey},
		{"negative", func(m *wire.ExchangeRequest) { withPublic(m.ClientNonce, append(le(valid)[:256], 0x80)) }, InvalidPublicKey},
		{"non-minimal", func(m *wire.ExchangeRequest) { withPublic(m.ClientNonce, append(le(valid), 0, 0)) }, InvalidPublicKey},
		{"258 bytes", func(m *wire.ExchangeRequest) {
			b := le(valid)
			withPublic(m.ClientNonce, append(b, make([]byte, 258-len(b))...))
		}, InvalidPublicKey},
		{"wrong Domain", func(m *wire.ExchangeRequest) { m.ClientNonce.Domain = append([]byte{}, m.ClientNonce.Domain[:18]...) }, UnsupportedDomain},
		{"wrong Domain and value", func(m *wire.ExchangeRequest) {
			withPublic(m.ClientNonce, le(one))
			m.ClientNonce.Domain = []byte("group 16")
		}, UnsupportedDomain},
		{"kid mismatch", func(m *wire.ExchangeRequest) { m.ClientCredential.KID = m.ClientNonce.KID }, KidMismatch},
		{"bad value and kid", func(m *wire.ExchangeRequest) { m.ClientNonce.Public = le(one) }, InvalidPublicKey},
		{"C = N", func(m *wire.ExchangeRequest) { m.ClientNonce = m.ClientCredential }, InvalidPublicKey},
		{"no credential", func(m *wire.ExchangeRequest) { m.ClientCredential = nil }, Malformed},
		{"no nonce", func(m *wire.ExchangeRequest) { m.ClientNonce = nil }, Malformed},
		{"empty offer", func(m *wire.ExchangeRequest) { m.Offer = []wire.Suite{} }, NoCommonAlgorithm},
		{"unsupported offer", func(m *wire.ExchangeRequest) {
			m.Offer = []wire.Suite{{Encryption: []string{"A128GCM"}, Authentication: []string{HS512}}}
		}, NoCommonAlgorithm},
	}
	for _, c := range cases {
		m := validRequest(t)
		c.mutate(m)
		// Through the wire, as the service sees it.
		b, _ := json.Marshal(m)
		var decoded wire.ExchangeRequest
		err := wire.Unmarshal(b, &decoded)
		if err == nil {
			_, err = ParseRequest(&decoded)
		}
		e := AsError(err)
		if err == nil || e.Code != c.code {
			t.Errorf("%s: got %v, want %s", c.name, err, c.code)
			continue
		}
		if e.Code.Status() < 400 || e.Code.Status() > 422 || e.Description == "" {
			t.Errorf("%s: status %d description %q", c.name, e.Code.Status(), e.Description)
		}
	}
}

func TestDecodeRejections(t *testing.T) {
	good, _ := json.Marshal(validRequest(t))
	s := string(good)
	cases := map[string]string{
		"duplicate member": strings.Replace(s, `"ClientNonce":`, `"ClientNonce":{"PublicKeyDH":{}},"ClientNonce":`, 1),
		// SPEC v1.1 §2: names are exact, so "KID" would be another,
		// unknown member; the same name spelt with an escape is a duplicate.
		"duplicate spelt with an escape": strings.Replace(s, `"kid":`, `"k\u0069d":"x","kid":`, 1),
		"duplicate tag":                  `{"ExchangeRequest":{},` + s[1:],
		"not JSON":                       "hello",
		"truncated":                      s[:len(s)/2],
		"trailing data":                  s + "{}",
		"wrong tag":                      strings.Replace(s, "ExchangeRequest", "ExchangeResponse", 1),
		"tag not an object":              `{"ExchangeRequest":[1,2]}`,
		"array":                          `[` + s + `]`,
		"deep nesting":                   `{"ExchangeRequest":{"Offer":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}}`,
		"Public not a string":            strings.Replace(s, `"Public":"`, `"Public":5,"x":"`, 1),
		"padded base64":                  strings.Replace(s, `"Domain":"YE6bnq1MlX5ojaJto6PLP_PEwA"`, `"Domain":"YE6bnq1MlX5ojaJto6PLP_PEwA=="`, 1),
		"standard base64 alphabet":       strings.Replace(s, `"Domain":"YE6bnq1MlX5ojaJto6PLP_PEwA"`, `"Domain":"YE6bnq1MlX5ojaJto6PLP/PEwA"`, 1),
		"non-canonical base64":           strings.Replace(s, `"Domain":"YE6bnq1MlX5ojaJto6PLP_PEwA"`, `"Domain":"YE6bnq1MlX5ojaJto6PLP_PEwB"`, 1),
		"Offer not an array":             `{"ExchangeRequest":{"Offer":"A256CBC-HS512"}}`,
		"null body":                      `null`,
	}
	for name, body := range cases {
		var m wire.ExchangeRequest
		err := wire.Unmarshal([]byte(body), &m)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if e := AsError(err); e.Code != Malformed || !strings.HasSuffix(e.Description, ".") {
			t.Errorf("%s: %v", name, e)
		}
	}
	// White space inside base64url is ignored, and so are unknown members.
	wrapped := strings.Replace(s, `"Domain":"YE6bnq1MlX5oj`, `"Domain":"\nYE6bn q1MlX5oj\t`, 1)
	wrapped = strings.Replace(wrapped, `"ExchangeRequest":{`, `"ExchangeRequest":{"Comment":"hi",`, 1)
	var m wire.ExchangeRequest
	if err := wire.Unmarshal([]byte(wrapped), &m); err != nil {
		t.Fatalf("escaped white space or unknown member refused: %v", err)
	}
	if _, err := ParseRequest(&m); err != nil {
		t.Fatal(err)
	}
}

func TestOpenTicketRefusals(t *testing.T) {
	srv, ks := newServer(t)
	key, _ := GenerateClientKey(rand.Reader, ModP2048)
	sess, _ := exchangeOnce(t, srv, key, nil)
	for i := range sess.Ticket {
		bad := append([]byte(nil), sess.Ticket...)
		bad[i] ^= 0x40
		if _, err := srv.openTicket(context.Background(), bad); AsError(err).Code != BadAuthentication {
			t.Fatalf("flipped byte %d: %v", i, err)
		}
	}
	for _, bad := range [][]byte{nil, {1}, sess.Ticket[:ticket.HeaderSize+ticket.TagSize-1]} {
		if _, err := srv.openTicket(context.Background(), bad); AsError(err).Code != BadAuthentication {
			t.Fatalf("short ticket: %v", err)
		}
	}
	// After rotation the old ticket still opens.
	ks.RotateTicketKey()
	assertAgree(t, srv, sess, 0)
}

// countingAccounts is a registry of one enabled credential that counts
// the queries it answers.
type countingAccounts struct {
	enabledAccounts
	kid     string
	queries int
}

func (a *countingAccounts) Owner(_ context.Context, kid string) (string, bool, error) {
	a.queries++
	if kid != a.kid {
		return "", false, nil
	}
	return "alice@example.com", false, nil
}

// TestAccountTrustedForStatusTTL: a registered credential's account is
// asked of the registry once per StatusTTL; an unregistered one every time,
// so that a credential registered a moment ago exchanges at once.
func TestAccountTrustedForStatusTTL(t *testing.T) {
	now := time.Unix(1_750_000_000, 0)
	reg := &countingAccounts{kid: "known"}
	s := &Server{Accounts: reg, StatusTTL: 10 * time.Second, Now: func() time.Time { return now }}
	ctx := context.Background()
	for i := range 3 {
		if acct, _, err := s.Account(ctx, "known"); err != nil || acct != "alice@example.com" {
			t.Fatalf("query %d: %q, %v", i, acct, err)
		}
	}
	if reg.queries != 1 {
		t.Fatalf("three lookups within StatusTTL asked the registry %d times, want 1", reg.queries)
	}
	now = now.Add(11 * time.Second)
	s.Account(ctx, "known")
	if reg.queries != 2 {
		t.Fatalf("a lookup after StatusTTL did not ask the registry (%d queries)", reg.queries)
	}
	for range 2 {
		if acct, _, _ := s.Account(ctx, "unknown"); acct != "" {
			t.Fatalf("an unregistered credential has account %q", acct)
		}
	}
	if reg.queries != 4 {
		t.Fatalf("an unregistered credential was remembered (%d queries, want 4)", reg.queries)
	}
}
