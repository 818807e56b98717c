package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/testclock"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
	"github.com/custos-kx/custos/keystore"
)

// In-package tests of the service's refusals and of one signed answer.
// The service runs on an in-memory keystore and an SQLite registry, with a
// clock the test moves; nothing here waits for real time to pass.

const (
	testLifetime = time.Hour
	// statusTTL is a little more than the time the engine trusts an
	// account's status by default.
	statusTTL  = 11 * time.Second
	testWindow = 24 * time.Hour
	alice      = "alice@example.com"
	bob        = "bob@example.com"
)

// fixture is a service with alice registered and a fresh session of hers.
type fixture struct {
	clock  *testclock.Clock
	ks     *keystore.Software
	reg    *accounts.Registry
	engine *exchange.Server
	svc    *Service
	key    *exchange.ClientKey // alice's credential
	sess   *exchange.Session   // a fresh session of key
}

func newFixture(t *testing.T, tune ...func(*Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	ks, err := keystore.NewSoftware(nil)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := accounts.Open(ctx, filepath.Join(t.TempDir(), "custos.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	f := &fixture{clock: testclock.New(), ks: ks, reg: reg}
	f.engine = &exchange.Server{Keystore: ks, Accounts: reg, Now: f.clock.Now, SessionLifetime: testLifetime, RekeyWindow: testWindow}
	cfg := Config{
		Engine: f.engine,
		Logger: slog.New(slog.DiscardHandler),
		Limits: Limits{PerAddress: -1, PerAccount: -1},
		Now:    f.clock.Now,
	}
	for _, fn := range tune {
		fn(&cfg)
	}
	f.svc = New(cfg)
	f.key = f.register(t, alice)
	f.sess = f.exchange(t, f.key)
	return f
}

// register makes a credential and binds it to account.
func (f *fixture) register(t *testing.T, account string) *exchange.ClientKey {
	t.Helper()
	k, err := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.reg.Add(context.Background(), account, k.Public()); err != nil {
		t.Fatal(err)
	}
	return k
}

func (f *fixture) serve(r *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	f.svc.ServeHTTP(rec, r)
	return rec
}

// newRequest builds a request to the service; empty auth and contentType
// leave those headers out.
func newRequest(method, target string, body []byte, auth, contentType string) *http.Request {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	return r
}

func exchangeBody(t *testing.T, k *exchange.ClientKey) (*exchange.PendingExchange, []byte) {
	t.Helper()
	pending, msg, err := k.NewExchange(rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return pending, b
}

// exchange runs a client-side exchange of k against the service.
func (f *fixture) exchange(t *testing.T, k *exchange.ClientKey) *exchange.Session {
	t.Helper()
	pending, body := exchangeBody(t, k)
	rec := f.serve(newRequest(http.MethodPost, WellKnown, body, "", "application/json"))
	if rec.Code != http.StatusOK {
		t.Fatalf("exchange: %d %s", rec.Code, rec.Body)
	}
	var resp wire.ExchangeResponse
	if err := wire.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	sess, err := pending.Finish(&resp)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// sign returns the Authorization of a request signed under sess at now.
func sign(t *testing.T, sess *exchange.Session, method, target string, body []byte, now time.Time) string {
	t.Helper()
	h := http.Header{}
	if body != nil {
		h.Set("Content-Type", "application/json") // what the tests send it with
	}
	out, err := sess.SignRequest(method, target, h, body, false, now)
	if err != nil {
		t.Fatal(err)
	}
	return out.Authorization
}

// forge signs claims for ticket tk under key with typ, as only a client
// that strays from SignRequest would.
func forge(t *testing.T, key, tk []byte, typ string, c *jwc.Claims) string {
	t.Helper()
	tok, err := jwc.SignOnce(key, tk, typ, c)
	if err != nil {
		t.Fatal(err)
	}
	return jwc.Scheme + " " + tok
}

func (f *fixture) claims(method, target string, body []byte) *jwc.Claims {
	noHeaders, _ := jwc.HeaderHash(nil, nil)
	return &jwc.Claims{Method: method, Target: target, IssuedAt: f.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(body),
		Headers: []string{}, HeaderHash: noHeaders}
}

// whoami is a correctly signed GET /v1/whoami under f.sess.
func (f *fixture) whoami(t *testing.T) *http.Request {
	return newRequest(http.MethodGet, "/v1/whoami", nil, sign(t, f.sess, http.MethodGet, "/v1/whoami", nil, f.clock.Now()), "")
}

// rekeyRequest is a rekey of sess signed under key (its RK unless set).
func (f *fixture) rekeyRequest(t *testing.T, sess *exchange.Session, key []byte) (*exchange.PendingRekey, *http.Request) {
	t.Helper()
	pending, msg, err := sess.NewRekey(rand.Reader, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(msg)
	var auth string
	if key == nil {
		if auth, err = sess.SignRekey(body, f.clock.Now()); err != nil {
			t.Fatal(err)
		}
	} else {
		auth = forge(t, key, sess.Ticket, jwc.TypeRekey, f.claims(http.MethodPost, WellKnown, body))
	}
	return pending, newRequest(http.MethodPost, WellKnown, body, auth, "application/json")
}

// wantRefusal checks a refusal: its status, the ExchangeResponse body with
// the SPEC code, the WWW-Authenticate header exactly when the status is
// 401, and that nothing signed it.
func wantRefusal(t *testing.T, rec *httptest.ResponseRecorder, status int, code exchange.Code, desc string) {
	t.Helper()
	if rec.Code != status {
		t.Errorf("status %d, want %d (body %s)", rec.Code, status, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var env struct {
		ExchangeResponse *struct {
			Status            *int
			StatusDescription string
			Error             string
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil || env.ExchangeResponse == nil || env.ExchangeResponse.Status == nil {
		t.Fatalf("body is not an ExchangeResponse with a Status (%v): %s", err, rec.Body)
	}
	m := env.ExchangeResponse
	if *m.Status != status || m.Error != string(code) {
		t.Errorf("body says %d %q, want %d %q", *m.Status, m.Error, status, code)
	}
	if m.StatusDescription == "" {
		t.Error("no StatusDescription")
	}
	if desc != "" && !strings.Contains(m.StatusDescription, desc) {
		t.Errorf("StatusDescription %q does not mention %q: another check refused the request", m.StatusDescription, desc)
	}
	wantAuth := ""
	if status == http.StatusUnauthorized {
		wantAuth = `JWC error="` + string(code) + `"`
	}
	if got := rec.Header().Get("WWW-Authenticate"); got != wantAuth {
		t.Errorf("WWW-Authenticate %q, want %q", got, wantAuth)
	}
	if got := rec.Header().Get("JWC-Error"); got != string(code) {
		t.Errorf("JWC-Error %q, want %q", got, code)
	}
}

// signedRefusals are the refusals made after the request's MAC verified:
// the service signs them (SPEC §6); the others are sent unsigned.
var signedRefusals = map[string]bool{
	"expired session": true, "method mismatch": true, "target mismatch: path": true, "target mismatch: query": true,
	"iat 61 s behind the clock": true, "iat 61 s ahead of the clock": true, "body hash mismatch": true,
	"body dropped after signing": true, "replayed request": true, "JWE under another key": true,
	"session of a disabled account": true, "session of a removed account": true,
}

type refusalCase struct {
	name   string
	status int
	code   exchange.Code
	// desc is part of the StatusDescription: it names the check that
	// must refuse the request, so that a case cannot pass by tripping
	// over an earlier one.
	desc  string
	build func(t *testing.T, f *fixture) *http.Request
}

func refusalCases() []refusalCase {
	const (
		A       = http.StatusUnauthorized
		noAuth  = "needs an Authorization: JWC header"
		refused = "The Authorization token was refused"
		badTkt  = "session ticket is not valid"
		badMAC  = "MAC does not verify"
	)
	get := func(mutate func(t *testing.T, f *fixture) string) func(t *testing.T, f *fixture) *http.Request {
		return func(t *testing.T, f *fixture) *http.Request {
			return newRequest(http.MethodGet, "/v1/whoami", nil, mutate(t, f), "")
		}
	}
	return []refusalCase{
		// The middleware, in the order Verify checks.
		{"no Authorization", A, exchange.BadAuthentication, noAuth, get(func(*testing.T, *fixture) string { return "" })},
		{"scheme Bearer with a valid token", A, exchange.BadAuthentication, noAuth, get(func(t *testing.T, f *fixture) string {
			return "Bearer " + strings.TrimPrefix(f.whoami(t).Header.Get("Authorization"), "JWC ")
		})},
		{"scheme JWC without a token", A, exchange.BadAuthentication, noAuth, get(func(*testing.T, *fixture) string { return "JWC" })},
		{"garbage token", A, exchange.BadAuthentication, refused, get(func(*testing.T, *fixture) string { return "JWC garbage" })},
		{"token with a garbage MAC part", A, exchange.BadAuthentication, refused, get(func(*testing.T, *fixture) string {
			return "JWC a.b.!!"
		})},
		{"ticket with one bit flipped", A, exchange.BadAuthentication, badTkt, get(func(t *testing.T, f *fixture) string {
			tk := bytes.Clone(f.sess.Ticket)
			tk[len(tk)/2] ^= 1
			return forge(t, f.sess.AK[:], tk, jwc.TypeRequest, f.claims(http.MethodGet, "/v1/whoami", nil))
		})},
		{"ticket sealed by another service", A, exchange.BadAuthentication, badTkt, get(func(t *testing.T, f *fixture) string {
			other, err := keystore.NewSoftware(nil)
			if err != nil {
				t.Fatal(err)
			}
			now := f.clock.Now()
			s := &ticket.Session{Account: alice, CredentialKID: f.key.Public().KeyID(), IssuedAt: now,
				Expires: now.Add(time.Hour), RekeyExpires: now.Add(time.Hour), AK: f.sess.AK,
				Encryption: exchange.DefaultSuite.Encryption, Authentication: exchange.DefaultSuite.Authentication}
			pt, _ := s.MarshalBinary()
			tk, err := ticket.Seal(context.Background(), other, rand.Reader, pt)
			if err != nil {
				t.Fatal(err)
			}
			return forge(t, f.sess.AK[:], tk, jwc.TypeRequest, f.claims(http.MethodGet, "/v1/whoami", nil))
		})},
		{"MAC under EK", A, exchange.BadAuthentication, badMAC, get(func(t *testing.T, f *fixture) string {
			return forge(t, f.sess.EK[:], f.sess.Ticket, jwc.TypeRequest, f.claims(http.MethodGet, "/v1/whoami", nil))
		})},
		{"MAC with one bit flipped", A, exchange.BadAuthentication, badMAC, get(func(t *testing.T, f *fixture) string {
			auth := f.whoami(t).Header.Get("Authorization")
			i := strings.LastIndexByte(auth, '.')
			mac, err := base64.RawURLEncoding.DecodeString(auth[i+1:])
			if err != nil {
				t.Fatal(err)
			}
			mac[0] ^= 0x80
			return auth[:i+1] + base64.RawURLEncoding.EncodeToString(mac)
		})},
		{"claims changed after signing", A, exchange.BadAuthentication, badMAC, get(func(t *testing.T, f *fixture) string {
			// the same header and MAC, over the claims of another request
			auth := f.whoami(t).Header.Get("Authorization")
			parts := strings.Split(auth, ".")
			other := strings.Split(sign(t, f.sess, http.MethodGet, "/v1/whoami", nil, f.clock.Now()), ".")
			return parts[0] + "." + other[1] + "." + parts[2]
		})},
		{"rekey token on a request", A, exchange.BadAuthentication, `typ "jwc-rekey"`, get(func(t *testing.T, f *fixture) string {
			return forge(t, f.sess.RK[:], f.sess.Ticket, jwc.TypeRekey, f.claims(http.MethodGet, "/v1/whoami", nil))
		})},
		{"expired session", A, exchange.TicketExpired, "The session ended", get(func(t *testing.T, f *fixture) string {
			f.clock.Advance(testLifetime + time.Second)
			return f.whoami(t).Header.Get("Authorization")
		})},
		{"method mismatch", A, exchange.BadAuthentication, "method POST, not GET", get(func(t *testing.T, f *fixture) string {
			return sign(t, f.sess, http.MethodPost, "/v1/whoami", nil, f.clock.Now())
		})},
		{"target mismatch: path", A, exchange.BadAuthentication, `made for "/v1/echo"`, get(func(t *testing.T, f *fixture) string {
			return sign(t, f.sess, http.MethodGet, "/v1/echo", nil, f.clock.Now())
		})},
		{"target mismatch: query", A, exchange.BadAuthentication, `made for "/v1/whoami?admin=1"`, get(func(t *testing.T, f *fixture) string {
			return sign(t, f.sess, http.MethodGet, "/v1/whoami?admin=1", nil, f.clock.Now())
		})},
		{"iat 61 s behind the clock", A, exchange.BadAuthentication, "iat", get(func(t *testing.T, f *fixture) string {
			return sign(t, f.sess, http.MethodGet, "/v1/whoami", nil, f.clock.Now().Add(-61*time.Second))
		})},
		{"iat 61 s ahead of the clock", A, exchange.BadAuthentication, "iat", get(func(t *testing.T, f *fixture) string {
			return sign(t, f.sess, http.MethodGet, "/v1/whoami", nil, f.clock.Now().Add(61*time.Second))
		})},
		{"body hash mismatch", A, exchange.BadAuthentication, "bdh", func(t *testing.T, f *fixture) *http.Request {
			auth := sign(t, f.sess, http.MethodPost, "/v1/echo", []byte(`"signed"`), f.clock.Now())
			return newRequest(http.MethodPost, "/v1/echo", []byte(`"sent"`), auth, "application/json")
		}},
		{"body dropped after signing", A, exchange.BadAuthentication, "bdh", func(t *testing.T, f *fixture) *http.Request {
			auth := sign(t, f.sess, http.MethodPost, "/v1/echo", []byte(`"signed"`), f.clock.Now())
			return newRequest(http.MethodPost, "/v1/echo", nil, auth, "")
		}},
		{"replayed request", A, exchange.BadAuthentication, "already received", func(t *testing.T, f *fixture) *http.Request {
			auth := f.whoami(t).Header.Get("Authorization")
			if rec := f.serve(newRequest(http.MethodGet, "/v1/whoami", nil, auth, "")); rec.Code != http.StatusOK {
				t.Fatalf("first sending: %d %s", rec.Code, rec.Body)
			}
			f.clock.Advance(30 * time.Second) // still within the skew
			return newRequest(http.MethodGet, "/v1/whoami", nil, auth, "")
		}},
		{"JWE under another key", A, exchange.BadAuthentication, "encrypted body was refused", func(t *testing.T, f *fixture) *http.Request {
			enc, err := jwc.Encrypt(f.sess.AK[:], f.sess.Ticket, []byte(`"hi"`), "application/json")
			if err != nil {
				t.Fatal(err)
			}
			c := f.claims(http.MethodPost, "/v1/echo", []byte(enc))
			c.Headers, c.Encryption = []string{"content-type"}, jwc.A256CBCHS512
			c.HeaderHash, _ = jwc.HeaderHash(c.Headers, http.Header{"Content-Type": {"application/jose"}})
			return newRequest(http.MethodPost, "/v1/echo", []byte(enc), forge(t, f.sess.AK[:], f.sess.Ticket, jwc.TypeRequest, c), "application/jose")
		}},
		{"session of a disabled account", http.StatusForbidden, exchange.AccountDisabled, "disabled", get(func(t *testing.T, f *fixture) string {
			s := f.exchange(t, f.register(t, bob))
			if err := f.reg.SetDisabled(context.Background(), bob, true); err != nil {
				t.Fatal(err)
			}
			f.clock.Advance(statusTTL) // the exchange's answer from the registry is trusted this long
			return sign(t, s, http.MethodGet, "/v1/whoami", nil, f.clock.Now())
		})},
		{"session of a removed account", http.StatusForbidden, exchange.UnknownCredential, "no longer registered", get(func(t *testing.T, f *fixture) string {
			s := f.exchange(t, f.register(t, bob))
			if err := f.reg.Remove(context.Background(), bob); err != nil {
				t.Fatal(err)
			}
			f.clock.Advance(statusTTL) // the exchange's answer from the registry is trusted this long
			return sign(t, s, http.MethodGet, "/v1/whoami", nil, f.clock.Now())
		})},
		{"oversized body under a session", http.StatusRequestEntityTooLarge, exchange.TooLarge, "larger than 65536", func(t *testing.T, f *fixture) *http.Request {
			body := bytes.Repeat([]byte("a"), 64<<10+1)
			return newRequest(http.MethodPost, "/v1/echo", body, sign(t, f.sess, http.MethodPost, "/v1/echo", body, f.clock.Now()), "application/json")
		}},
		{"oversized headers", http.StatusRequestEntityTooLarge, exchange.TooLarge, "headers", func(t *testing.T, f *fixture) *http.Request {
			r := f.whoami(t)
			r.Header.Set("X-Padding", strings.Repeat("a", MaxHeaderBytes))
			return r
		}},

		// The exchange endpoint.
		{"exchange as text/plain", http.StatusUnsupportedMediaType, exchange.UnsupportedMediaType, "application/json", func(t *testing.T, f *fixture) *http.Request {
			_, body := exchangeBody(t, f.key)
			return newRequest(http.MethodPost, WellKnown, body, "", "text/plain")
		}},
		{"exchange without Content-Type", http.StatusUnsupportedMediaType, exchange.UnsupportedMediaType, "application/json", func(t *testing.T, f *fixture) *http.Request {
			_, body := exchangeBody(t, f.key)
			return newRequest(http.MethodPost, WellKnown, body, "", "")
		}},
		{"exchange as application/jose", http.StatusUnsupportedMediaType, exchange.UnsupportedMediaType, "application/json", func(t *testing.T, f *fixture) *http.Request {
			_, body := exchangeBody(t, f.key)
			return newRequest(http.MethodPost, WellKnown, body, "", "application/jose")
		}},
		{"exchange body over 64 KiB", http.StatusRequestEntityTooLarge, exchange.TooLarge, "larger than 65536", func(t *testing.T, f *fixture) *http.Request {
			_, body := exchangeBody(t, f.key)
			body = append(body[:len(body)-2], `,"Pad":"`...)
			body = append(body, bytes.Repeat([]byte("a"), 64<<10)...)
			body = append(body, `"}}`...)
			return newRequest(http.MethodPost, WellKnown, body, "", "application/json")
		}},
		{"exchange body not JSON", http.StatusBadRequest, exchange.Malformed, "not a well-formed message", func(t *testing.T, f *fixture) *http.Request {
			return newRequest(http.MethodPost, WellKnown, []byte("hello"), "", "application/json")
		}},
		{"exchange for an unregistered credential", http.StatusForbidden, exchange.UnknownCredential, "not registered", func(t *testing.T, f *fixture) *http.Request {
			stranger, err := exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
			if err != nil {
				t.Fatal(err)
			}
			_, body := exchangeBody(t, stranger)
			return newRequest(http.MethodPost, WellKnown, body, "", "application/json")
		}},
		{"exchange for a disabled account", http.StatusForbidden, exchange.AccountDisabled, "disabled", func(t *testing.T, f *fixture) *http.Request {
			k := f.register(t, bob)
			if err := f.reg.SetDisabled(context.Background(), bob, true); err != nil {
				t.Fatal(err)
			}
			_, body := exchangeBody(t, k)
			return newRequest(http.MethodPost, WellKnown, body, "", "application/json")
		}},
		{"PUT on the well-known path", http.StatusMethodNotAllowed, exchange.Malformed, "Use POST", func(t *testing.T, f *fixture) *http.Request {
			return newRequest(http.MethodPut, WellKnown, []byte("{}"), "", "application/json")
		}},
		{"DELETE on the well-known path", http.StatusMethodNotAllowed, exchange.Malformed, "Use POST", func(t *testing.T, f *fixture) *http.Request {
			return newRequest(http.MethodDelete, WellKnown, nil, "", "")
		}},

		// Rekey.
		{"rekey signed under AK", A, exchange.BadAuthentication, badMAC, func(t *testing.T, f *fixture) *http.Request {
			_, r := f.rekeyRequest(t, f.sess, f.sess.AK[:])
			return r
		}},
		{"rekey after the rekey window", A, exchange.TicketExpired, "The rekey window ended", func(t *testing.T, f *fixture) *http.Request {
			f.clock.Advance(testWindow + time.Second)
			_, r := f.rekeyRequest(t, f.sess, nil)
			return r
		}},
		{"rekey with a request token", A, exchange.BadAuthentication, `typ "jwc-req"`, func(t *testing.T, f *fixture) *http.Request {
			_, r := f.rekeyRequest(t, f.sess, nil)
			body, _ := io.ReadAll(r.Body)
			return newRequest(http.MethodPost, WellKnown, body, sign(t, f.sess, http.MethodPost, WellKnown, body, f.clock.Now()), "application/json")
		}},
	}
}

// TestRefusals sends each bad request to a fresh service and checks the
// exact refusal; then that the service still answers a valid request of
// the same session (a refusal must not poison the session).
func TestRefusals(t *testing.T) {
	for _, c := range refusalCases() {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			rec := f.serve(c.build(t, f))
			wantRefusal(t, rec, c.status, c.code, c.desc)
			if signed := rec.Header().Get("JWC-Signature") != ""; signed != signedRefusals[c.name] {
				t.Errorf("refusal signed: %v, want %v", signed, signedRefusals[c.name])
			}
			if c.code == exchange.TicketExpired {
				return // the clock has moved past the fixture's session too
			}
			if rec := f.serve(f.whoami(t)); rec.Code != http.StatusOK {
				t.Errorf("a valid request after the refusal: %d %s", rec.Code, rec.Body)
			}
		})
	}
}

// TestAccepted checks the edges of what the service accepts: each request
// is answered 200 and signed.
func TestAccepted(t *testing.T) {
	for _, c := range []struct {
		name  string
		build func(t *testing.T, f *fixture) *http.Request
	}{
		{"iat 60 s behind the clock", func(t *testing.T, f *fixture) *http.Request {
			return newRequest(http.MethodGet, "/v1/whoami", nil, sign(t, f.sess, http.MethodGet, "/v1/whoami", nil, f.clock.Now().Add(-60*time.Second)), "")
		}},
		{"iat 60 s ahead of the clock", func(t *testing.T, f *fixture) *http.Request {
			return newRequest(http.MethodGet, "/v1/whoami", nil, sign(t, f.sess, http.MethodGet, "/v1/whoami", nil, f.clock.Now().Add(60*time.Second)), "")
		}},
		{"the session's last second", func(t *testing.T, f *fixture) *http.Request {
			f.clock.Advance(testLifetime)
			return f.whoami(t)
		}},
		{"scheme in lower case", func(t *testing.T, f *fixture) *http.Request {
			r := f.whoami(t)
			r.Header.Set("Authorization", "jwc "+strings.TrimPrefix(r.Header.Get("Authorization"), "JWC "))
			return r
		}},
		{"the same request signed twice (two jtis)", func(t *testing.T, f *fixture) *http.Request {
			if rec := f.serve(f.whoami(t)); rec.Code != http.StatusOK {
				t.Fatalf("first: %d", rec.Code)
			}
			return f.whoami(t)
		}},
		{"exchange as application/json with parameters", func(t *testing.T, f *fixture) *http.Request {
			_, body := exchangeBody(t, f.key)
			return newRequest(http.MethodPost, WellKnown, body, "", "application/json; charset=utf-8")
		}},
		{"exchange without the trailing slash", func(t *testing.T, f *fixture) *http.Request {
			_, body := exchangeBody(t, f.key)
			return newRequest(http.MethodPost, strings.TrimSuffix(WellKnown, "/"), body, "", "application/json")
		}},
		{"rekey after the session ended, in the window", func(t *testing.T, f *fixture) *http.Request {
			f.clock.Advance(testWindow)
			_, r := f.rekeyRequest(t, f.sess, nil)
			return r
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			r := c.build(t, f)
			rec := f.serve(r)
			if rec.Code != http.StatusOK {
				t.Fatalf("%d %s", rec.Code, rec.Body)
			}
			underSession := !strings.HasPrefix(r.URL.Path, "/.well-known/")
			if sig := rec.Header().Get("JWC-Signature"); underSession != (sig != "") {
				t.Errorf("JWC-Signature %q on an answer to %s", sig, r.URL.Path)
			}
		})
	}
}

func TestDiscovery(t *testing.T) {
	f := newFixture(t)
	x, err := f.ks.Credential(context.Background(), exchange.ModP2048)
	if err != nil {
		t.Fatal(err)
	}
	e, err := f.ks.Credential(context.Background(), exchange.P256)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{WellKnown, strings.TrimSuffix(WellKnown, "/")} {
		rec := f.serve(newRequest(http.MethodGet, path, nil, "", ""))
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("GET %s: %d %q %s", path, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
		var d wire.ServiceDescription
		if err := wire.Unmarshal(rec.Body.Bytes(), &d); err != nil {
			t.Fatalf("GET %s: %v: %s", path, err, rec.Body)
		}
		got, err := exchange.ParseKey(d.ServerCredential, "ServerCredential")
		if err != nil {
			t.Fatalf("GET %s: the ServerCredential does not parse: %v", path, err)
		}
		if !got.Equal(x) || d.ServerCredential.KID != x.KeyID() {
			t.Errorf("GET %s: ServerCredential %s, the keystore's is %s", path, d.ServerCredential.KID, x.KeyID())
		}
		if !bytes.Equal(d.ServerCredential.Domain, d.Domain) || len(d.Domain) == 0 {
			t.Errorf("GET %s: Domain %x", path, d.Domain)
		}
		if len(d.Encryption) == 0 || d.Encryption[0] != exchange.DefaultSuite.Encryption ||
			len(d.Authentication) == 0 || d.Authentication[0] != exchange.DefaultSuite.Authentication {
			t.Errorf("GET %s: algorithms %v %v", path, d.Encryption, d.Authentication)
		}
		// The session's credential is the one discovery names.
		if !f.sess.ServerCredential.Equal(got) {
			t.Errorf("GET %s: the exchange was agreed with another credential", path)
		}
		// Credentials lists both profiles' credentials, group 14 first (SPEC §8).
		if len(d.Credentials) != 2 {
			t.Fatalf("GET %s: Credentials has %d keys, want 2", path, len(d.Credentials))
		}
		for i, want := range []*exchange.PublicKey{x, e} {
			k, err := exchange.ParseKey(&d.Credentials[i], "Credentials")
			if err != nil || !k.Equal(want) {
				t.Errorf("GET %s: Credentials[%d] = %s (%v), want %s", path, i, d.Credentials[i].KID, err, want.KeyID())
			}
		}
	}
	rec := f.serve(newRequest(http.MethodPut, WellKnown, nil, "", ""))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") != "GET, POST" {
		t.Errorf("PUT: %d, Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}

// TestSignedResponse makes requests under a session over a real connection
// and checks each answer's JWC-Signature with Outgoing.CheckResponse, and
// that the check fails once anything in the answer changes.
func TestSignedResponse(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(f.svc)
	defer srv.Close()
	// send signs a request under f.sess and sends it as signed.
	send := func(method, path string, h http.Header, body []byte, encrypt bool) (*exchange.Outgoing, *http.Response, []byte) {
		t.Helper()
		out, err := f.sess.SignRequest(method, path, h, body, encrypt, f.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(out.Body))
		req.Header = h
		req.Header.Set("Authorization", out.Authorization)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return out, resp, b
	}

	out, resp, body := send(http.MethodGet, "/v1/whoami", http.Header{}, nil, false)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("JWC-Signature") == "" {
		t.Fatalf("whoami: %d, signature %q, %s", resp.StatusCode, resp.Header.Get("JWC-Signature"), body)
	}
	hdr := resp.Header.Clone()
	got, err := out.CheckResponse(resp.StatusCode, resp.Header, body)
	if err != nil || !got.Signed || got.Refusal != "" {
		t.Fatalf("the service's signature does not verify: %+v %v", got, err)
	}
	var who struct {
		Account       string `json:"account"`
		CredentialKID string `json:"credential_kid"`
		Expires       string `json:"expires"`
		Generation    uint32 `json:"generation"`
	}
	if err := json.Unmarshal(got.Body, &who); err != nil {
		t.Fatal(err)
	}
	wantExpires := f.clock.Now().Add(testLifetime).UTC().Format(time.RFC3339)
	if who.Account != alice || who.CredentialKID != f.key.Public().KeyID() || who.Generation != 0 || who.Expires != wantExpires {
		t.Errorf("whoami %+v, want %s %s generation 0 expiring %s", who, alice, f.key.Public().KeyID(), wantExpires)
	}

	// Anything changed in the answer, or an answer to another request, fails the check.
	other, _ := f.sess.SignRequest(http.MethodGet, "/v1/whoami", http.Header{}, nil, false, f.clock.Now())
	tampered := bytes.Replace(body, []byte(alice), []byte("mallory@example.com"), 1)
	retyped := hdr.Clone()
	retyped.Set("Content-Type", "text/html")
	unsigned := hdr.Clone()
	unsigned.Del("JWC-Signature")
	for name, check := range map[string]func() (*exchange.Response, error){
		"body changed":                 func() (*exchange.Response, error) { return out.CheckResponse(200, hdr.Clone(), tampered) },
		"status changed":               func() (*exchange.Response, error) { return out.CheckResponse(201, hdr.Clone(), body) },
		"covered header changed":       func() (*exchange.Response, error) { return out.CheckResponse(200, retyped, body) },
		"signature dropped":            func() (*exchange.Response, error) { return out.CheckResponse(200, unsigned, body) },
		"answer to a request not made": func() (*exchange.Response, error) { return other.CheckResponse(200, hdr.Clone(), body) },
		"signature of another session": func() (*exchange.Response, error) {
			s2 := f.exchange(t, f.key)
			o2, _ := s2.SignRequest(http.MethodGet, "/v1/whoami", http.Header{}, nil, false, f.clock.Now())
			return o2.CheckResponse(200, hdr.Clone(), body)
		},
	} {
		if _, err := check(); err == nil {
			t.Errorf("%s: CheckResponse accepted it", name)
		}
	}

	// An encrypted request is answered encrypted, and signed over the JWE;
	// the handler saw the plaintext's media type.
	msg := []byte("a body only the session may read")
	out, resp, body = send(http.MethodPost, "/v1/echo", http.Header{"Content-Type": {"text/plain"}}, msg, true)
	if bytes.Contains(out.Body, msg) {
		t.Fatal("SignRequest with encrypt sends the body in the clear")
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/jose" || bytes.Contains(body, msg) {
		t.Fatalf("encrypted echo: %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	got, err = out.CheckResponse(resp.StatusCode, resp.Header, body)
	if err != nil || !bytes.Equal(got.Body, msg) {
		t.Fatalf("encrypted echo: %+v, %v", got, err)
	}

	// A refusal before the MAC verified is not signed, and passes
	// unchanged, with its code.
	out, _ = f.sess.SignRequest(http.MethodGet, "/v1/echo", http.Header{}, nil, false, f.clock.Now())
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v1/whoami", nil)
	req.Header.Set("Authorization", out.Authorization+"x")
	resp2, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusUnauthorized || resp2.Header.Get("JWC-Signature") != "" {
		t.Fatalf("a broken MAC: %d, signature %q", resp2.StatusCode, resp2.Header.Get("JWC-Signature"))
	}
	if got, err := out.CheckResponse(resp2.StatusCode, resp2.Header, body); err != nil || got.Signed || got.Refusal != exchange.BadAuthentication || !bytes.Equal(got.Body, body) {
		t.Errorf("an unsigned refusal: %+v %v", got, err)
	}
	// One after the MAC verified (a target mismatch) is signed, and names
	// the target the service received.
	out, _ = f.sess.SignRequest(http.MethodGet, "/v1/echo", http.Header{}, nil, false, f.clock.Now())
	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/v1/whoami", nil)
	req.Header.Set("Authorization", out.Authorization)
	resp2, err = srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusUnauthorized || resp2.Header.Get("JWC-Signature") == "" {
		t.Fatalf("a target mismatch: %d, signature %q", resp2.StatusCode, resp2.Header.Get("JWC-Signature"))
	}
	if _, err := out.CheckResponse(resp2.StatusCode, resp2.Header, body); err == nil {
		t.Error("a signed refusal for /v1/whoami passed as the answer to a request for /v1/echo")
	}
}

// TestRekey renews a session through the endpoint: the new session works,
// its generation counts, and its rekey window is still the exchange's.
func TestRekey(t *testing.T) {
	f := newFixture(t)
	sess := f.sess
	for gen := uint32(1); gen <= 2; gen++ {
		f.clock.Advance(testLifetime + time.Minute) // the old session has ended
		pending, r := f.rekeyRequest(t, sess, nil)
		rec := f.serve(r)
		if rec.Code != http.StatusOK {
			t.Fatalf("rekey %d: %d %s", gen, rec.Code, rec.Body)
		}
		var resp wire.ExchangeResponse
		if err := wire.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatal(err)
		}
		if resp.ServerCredential != nil {
			t.Error("a rekey response names the ServerCredential")
		}
		next, err := pending.Finish(&resp)
		if err != nil {
			t.Fatalf("rekey %d: %v", gen, err)
		}
		if bytes.Equal(next.AK[:], sess.AK[:]) || bytes.Equal(next.Ticket, sess.Ticket) {
			t.Fatal("the rekeyed session has the old keys or ticket")
		}
		sess = next
		out, _ := sess.SignRequest(http.MethodGet, "/v1/whoami", http.Header{}, nil, false, f.clock.Now())
		rec = f.serve(newRequest(http.MethodGet, "/v1/whoami", nil, out.Authorization, ""))
		if rec.Code != http.StatusOK {
			t.Fatalf("whoami under generation %d: %d %s", gen, rec.Code, rec.Body)
		}
		checked, err := out.CheckResponse(rec.Code, rec.Header(), rec.Body.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		var who struct{ Generation uint32 }
		json.Unmarshal(checked.Body, &who)
		if who.Generation != gen {
			t.Errorf("generation %d, want %d", who.Generation, gen)
		}
	}
	// The window runs from the exchange, not from the last rekey.
	f.clock.Advance(testWindow - 2*(testLifetime+time.Minute) + time.Second)
	_, r := f.rekeyRequest(t, sess, nil)
	wantRefusal(t, f.serve(r), http.StatusUnauthorized, exchange.TicketExpired, "rekey window")
}

// TestRateLimits checks both limits with the service's clock: the next
// exchange is refused with Retry-After until a token is back.
func TestRateLimits(t *testing.T) {
	for _, c := range []struct {
		name   string
		limits Limits
		desc   string
		// other says whether an exchange by another account from the
		// same address is admitted while the first is limited.
		other bool
	}{
		{"per address", Limits{PerAddress: 1, AddressBurst: 1, PerAccount: -1}, "your address", false},
		{"per account", Limits{PerAddress: -1, PerAccount: 1, AccountBurst: 1}, "account " + alice, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, func(cfg *Config) { cfg.Limits = c.limits }) // the fixture's exchange takes the burst
			bobKey := f.register(t, bob)
			post := func(k *exchange.ClientKey) *httptest.ResponseRecorder {
				_, body := exchangeBody(t, k)
				return f.serve(newRequest(http.MethodPost, WellKnown, body, "", "application/json"))
			}
			rec := post(f.key)
			wantRefusal(t, rec, http.StatusTooManyRequests, exchange.RateLimited, c.desc)
			if ra := rec.Header().Get("Retry-After"); ra != "1" {
				t.Errorf("Retry-After %q, want 1", ra)
			}
			if got := post(bobKey).Code; (got == http.StatusOK) != c.other {
				t.Errorf("another account from the same address: %d", got)
			}
			f.clock.Advance(time.Second)
			if rec := post(f.key); rec.Code != http.StatusOK {
				t.Errorf("a second later: %d %s", rec.Code, rec.Body)
			}
		})
	}
}

// TestUpstreamAccountHeader checks that the upstream learns the account
// from Custos alone: a client's own Custos-Account header is dropped, and
// an unauthenticated request never reaches the upstream.
func TestUpstreamAccountHeader(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get(AccountHeader)+" "+r.URL.RequestURI())
		mu.Unlock()
		w.Write([]byte("upstream"))
	}))
	defer up.Close()
	u, _ := url.Parse(up.URL)
	f := newFixture(t, func(cfg *Config) { cfg.Upstream = u })

	r := newRequest(http.MethodGet, "/api/x?y=1", nil, sign(t, f.sess, http.MethodGet, "/api/x?y=1", nil, f.clock.Now()), "")
	r.Header.Set(AccountHeader, "root")
	if rec := f.serve(r); rec.Code != http.StatusOK || rec.Body.String() != "upstream" || rec.Header().Get("JWC-Signature") == "" {
		t.Fatalf("proxied: %d %q", rec.Code, rec.Body)
	}
	r = newRequest(http.MethodGet, "/api/x", nil, "", "")
	r.Header.Set(AccountHeader, alice)
	wantRefusal(t, f.serve(r), http.StatusUnauthorized, exchange.BadAuthentication, "")
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != alice+" /api/x?y=1" {
		t.Errorf("the upstream saw %q, want one request from %s", seen, alice)
	}
}

// TestAbandonedExchange: an exchange whose client has gone away fails
// where it waited with the context's error; it is counted as abandoned,
// not as the outage of the registry or token it was waiting for.
func TestAbandonedExchange(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxExchanges = 1 })
	k := f.register(t, bob)
	profile := "unknown" // refused before its keys were read
	count := func(result string) float64 {
		return testutil.ToFloat64(exchangesTotal.WithLabelValues(profile, "exchange", result))
	}
	before, outages := count(abandoned), count(string(exchange.RegistryUnavailable))+count(string(exchange.KeystoreUnavailable))
	_, body := exchangeBody(t, k)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.svc.exchanges <- struct{}{} // the one turn is taken: the request waits for it
	f.serve(newRequest(http.MethodPost, WellKnown, body, "", "application/json").WithContext(ctx))
	<-f.svc.exchanges
	if got := count(abandoned) - before; got != 1 {
		t.Errorf("an exchange whose client went away counted %v times as abandoned, want 1", got)
	}
	if got := count(string(exchange.RegistryUnavailable)) + count(string(exchange.KeystoreUnavailable)) - outages; got != 0 {
		t.Errorf("an exchange whose client went away counted %v times as an outage", got)
	}
	f.exchange(t, k) // and the service still serves
}
