package tests

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/wire"
	"github.com/custos-kx/custos/tests/pgtest"
)

func TestFullFlow(t *testing.T) {
	for _, backend := range []struct {
		name string
		dsn  func(*testing.T) string
	}{{"sqlite", sqliteDSN}, {"postgres", func(t *testing.T) string { return pgtest.Start(t) }}} {
		t.Run(backend.name, func(t *testing.T) {
			e := newEnv(t, backend.dsn(t))
			// One client state for both profiles: each pins its own
			// credential of the service.
			state := &client.State{Dir: t.TempDir()}
			for _, p := range exchange.Profiles {
				fullFlow(t, e, e.registerProfile(t, "alice@example.com", p), state)
			}
			for _, p := range exchange.Profiles {
				x, _ := e.ks.Credential(context.Background(), p)
				if pin, err := state.Pin(e.url, p); err != nil || pin != x.KeyID() {
					t.Errorf("%s pin %s (%v), want %s", p, pin, err, x.KeyID())
				}
			}
		})
	}
}

// fullFlow exchanges, makes plain and encrypted requests, rekeys and
// checks the session is of the key's profile.
func fullFlow(t *testing.T, e *env, key *exchange.ClientKey, state *client.State) {
	t.Helper()
	tr := &client.Transport{Key: key, State: state}
	hc := &http.Client{Transport: tr}
	if err := tr.Exchange(context.Background(), e.url); err != nil {
		t.Fatal(err)
	}
	who := whoami(t, hc, e.url)
	if who["account"] != "alice@example.com" || who["credential_kid"] != key.Public().KeyID() || who["generation"] != float64(0) {
		t.Fatalf("%s: whoami: %v", key.Profile(), who)
	}
	enc := &http.Client{Transport: &client.Transport{Key: key, State: state, Encrypt: true}}
	resp, err := enc.Post(e.url+"/v1/echo", "text/plain", strings.NewReader("hello, custos"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "hello, custos" {
		t.Fatalf("encrypted echo: %d %q", resp.StatusCode, b)
	}
	if err := tr.Rekey(context.Background(), e.url); err != nil {
		t.Fatal(err)
	}
	if who := whoami(t, hc, e.url); who["generation"] != float64(1) || who["account"] != "alice@example.com" || who["credential_kid"] != key.Public().KeyID() {
		t.Fatalf("%s: whoami after rekey: %v", key.Profile(), who)
	}
}

func whoami(t *testing.T, hc *http.Client, url string) map[string]any {
	t.Helper()
	resp, err := hc.Get(url + "/v1/whoami")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
		t.Fatalf("whoami: %d %v", resp.StatusCode, err)
	}
	return m
}

// seedRequest returns the example's ExchangeRequest without its display wrapping.
func seedRequest(t *testing.T) []byte {
	doc, err := os.ReadFile("../exchange/testdata/jwcexchange-example.md")
	if err != nil {
		t.Fatal(err)
	}
	block := strings.Split(string(doc), "~~~~")[1]
	return []byte(wire.UnwrapDisplay(block[strings.Index(block, "{"):]))
}

func TestSeedRequest(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	body := seedRequest(t)
	status, m, _ := post(t, e.url, body, "")
	if status != http.StatusForbidden || m.Error != string(exchange.UnknownCredential) {
		t.Fatalf("unregistered seed: %d %s", status, m.Error)
	}
	var req wire.ExchangeRequest
	if err := wire.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	c, err := exchange.ParseKey(req.ClientCredential, "ClientCredential")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Add(context.Background(), "alice@example.com", c); err != nil {
		t.Fatal(err)
	}
	status, m, _ = post(t, e.url, body, "")
	if status != http.StatusOK || m.Status != 201 || m.StatusDescription != "Operation completed successfully" || m.Error != "" {
		t.Fatalf("registered seed: %d %+v", status, m)
	}
	x, err := exchange.ParseKey(m.ServerCredential, "ServerCredential")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := e.ks.Credential(context.Background(), exchange.ModP2048); !x.Equal(want) {
		t.Fatal("ServerCredential is not the token's credential")
	}
	if _, err := exchange.ParseKey(m.ServerNonce, "ServerNonce"); err != nil {
		t.Fatal(err)
	}
	if len(m.Witness) != exchange.WitnessSize || len(m.Ticket) == 0 ||
		strings.Join(m.Encryption, ",") != "A256CBC-HS512" || strings.Join(m.Authentication, ",") != "HS512" {
		t.Fatalf("malformed response: %+v", m)
	}
}

func TestAuthenticationRefusals(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	sess := rawExchange(t, e.url, key)
	get := request{method: "GET", path: "/v1/whoami"}
	if resp, b := e.send(t, sess, get); resp.StatusCode != 200 || resp.Header.Get("JWC-Signature") == "" {
		t.Fatalf("a good request was refused: %d %s", resp.StatusCode, b)
	}

	// Replay: the very same token twice.
	tok, _ := jwc.SignOnce(sess.AK[:], sess.Ticket, jwc.TypeRequest, covered(&jwc.Claims{Method: "GET", Target: "/v1/whoami", IssuedAt: e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(nil)}, nil))
	if resp, _ := e.send(t, sess, request{method: "GET", path: "/v1/whoami", token: tok}); resp.StatusCode != 200 {
		t.Fatalf("first use: %d", resp.StatusCode)
	}
	resp, b := e.send(t, sess, request{method: "GET", path: "/v1/whoami", token: tok})
	wantRefusal(t, "replay", resp, b, 401, exchange.BadAuthentication)

	tampered := append([]byte(nil), sess.Ticket...)
	tampered[len(tampered)-3] ^= 0x20
	resp, b = e.send(t, sess, request{method: "GET", path: "/v1/whoami", ticket: tampered})
	wantRefusal(t, "tampered ticket", resp, b, 401, exchange.BadAuthentication)

	good, _ := jwc.SignOnce(sess.AK[:], sess.Ticket, jwc.TypeRequest, covered(&jwc.Claims{Method: "GET", Target: "/v1/whoami", IssuedAt: e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(nil)}, nil))
	badMAC := good[:len(good)-2] + map[bool]string{true: "AA", false: "BB"}[!strings.HasSuffix(good, "AA")]
	resp, b = e.send(t, sess, request{method: "GET", path: "/v1/whoami", token: badMAC})
	wantRefusal(t, "tampered MAC", resp, b, 401, exchange.BadAuthentication)

	resp, b = e.send(t, sess, request{method: "GET", path: "/v1/whoami", claims: &jwc.Claims{Method: "GET", Target: "/v1/other", IssuedAt: e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(nil)}})
	wantRefusal(t, "wrong htu", resp, b, 401, exchange.BadAuthentication)

	resp, b = e.send(t, sess, request{method: "GET", path: "/v1/whoami", claims: &jwc.Claims{Method: "POST", Target: "/v1/whoami", IssuedAt: e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(nil)}})
	wantRefusal(t, "wrong htm", resp, b, 401, exchange.BadAuthentication)

	for name, skew := range map[string]time.Duration{"iat in the past": -2 * time.Minute, "iat in the future": 2 * time.Minute} {
		resp, b = e.send(t, sess, request{method: "GET", path: "/v1/whoami", claims: &jwc.Claims{Method: "GET", Target: "/v1/whoami", IssuedAt: e.clock.Now().Add(skew).Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(nil)}})
		wantRefusal(t, name, resp, b, 401, exchange.BadAuthentication)
	}

	resp, b = e.send(t, sess, request{method: "POST", path: "/v1/echo", body: []byte(`"x"`), claims: &jwc.Claims{Method: "POST", Target: "/v1/echo", IssuedAt: e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash([]byte(`"y"`))}})
	wantRefusal(t, "body hash", resp, b, 401, exchange.BadAuthentication)

	resp, b = e.send(t, sess, request{method: "GET", path: "/v1/whoami", key: sess.RK[:]})
	wantRefusal(t, "MAC under RK", resp, b, 401, exchange.BadAuthentication)

	resp, b = e.send(t, sess, request{method: "GET", path: "/v1/whoami", typ: jwc.TypeRekey, key: sess.RK[:]})
	wantRefusal(t, "rekey token on a request", resp, b, 401, exchange.BadAuthentication)

	req, _ := http.NewRequest("GET", e.url+"/v1/whoami", nil)
	r2, _ := http.DefaultClient.Do(req)
	b2, _ := io.ReadAll(r2.Body)
	wantRefusal(t, "no Authorization", r2, b2, 401, exchange.BadAuthentication)

	e.clock.Advance(2 * time.Hour)
	resp, b = e.send(t, sess, get)
	wantRefusal(t, "expired session", resp, b, 401, exchange.TicketExpired)

	// The service still serves.
	rawExchange(t, e.url, key)
}

func TestDisabledAccount(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	sess := rawExchange(t, e.url, key)
	if resp, _ := e.send(t, sess, request{method: "GET", path: "/v1/whoami"}); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	if err := e.reg.SetDisabled(context.Background(), "alice@example.com", true); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(30 * time.Second) // the promise: within 30 s
	resp, b := e.send(t, sess, request{method: "GET", path: "/v1/whoami"})
	wantRefusal(t, "disabled account, live session", resp, b, 403, exchange.AccountDisabled)
	_, msg, _ := key.NewExchange(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	status, m, _ := post(t, e.url, body, "")
	if status != 403 || m.Error != string(exchange.AccountDisabled) {
		t.Fatalf("disabled account exchange: %d %s", status, m.Error)
	}
}

// TestRotationWhileActive rotates the ticket key under a busy client, which
// keeps exchanging and rekeying: no request may fail.
func TestRotationWhileActive(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	tr := &client.Transport{Key: key}
	hc := &http.Client{Transport: tr}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	failures := make(chan error, 1000)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if g == 0 && i%10 == 9 {
					if err := tr.Rekey(context.Background(), e.url); err != nil {
						failures <- err
					}
					continue
				}
				resp, err := hc.Get(e.url + "/v1/whoami")
				if err != nil {
					failures <- err
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failures <- &client.ServiceError{Status: resp.StatusCode}
				}
			}
		}(g)
	}
	for i := 0; i < 3; i++ {
		time.Sleep(150 * time.Millisecond)
		if _, err := e.ks.RotateTicketKey(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	keys, _ := e.ks.Keys(context.Background())
	if len(keys) != 6 {
		t.Fatalf("expected 2 credentials (one per profile) and 4 ticket keys, have %d", len(keys))
	}
}

func TestDiscoveryAndHealth(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	resp, err := http.Get(e.url + httpapi.WellKnown)
	if err != nil {
		t.Fatal(err)
	}
	var d wire.ServiceDescription
	b, _ := io.ReadAll(resp.Body)
	if err := wire.Unmarshal(b, &d); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	x, err := exchange.ParseKey(d.ServerCredential, "ServerCredential")
	if want, _ := e.ks.Credential(context.Background(), exchange.ModP2048); err != nil || !x.Equal(want) {
		t.Fatal("discovery does not name the token's credential")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if r, err := http.Get(e.url + path); err != nil || r.StatusCode != 200 {
			t.Fatalf("%s: %v %v", path, r, err)
		}
	}
}

// TestSmallTicketCacheUnderLoad runs more sessions than the ticket cache
// holds, concurrently, so sessions are evicted while requests use them:
// not one request may fail.
func TestSmallTicketCacheUnderLoad(t *testing.T) {
	e := newEnv(t, sqliteDSN(t), func(c *httpapi.Config) { c.Engine.TicketCacheSize = 2 })
	key := e.register(t, "alice@example.com")
	var wg sync.WaitGroup
	failures := make(chan string, 100)
	for g := range 6 {
		wg.Go(func() {
			tr := &client.Transport{Key: key}
			hc := &http.Client{Transport: tr}
			for i := range 60 {
				resp, err := hc.Get(e.url + "/v1/whoami")
				if err != nil || resp.StatusCode != 200 {
					failures <- fmt.Sprintf("session %d request %d: %v %v", g, i, err, resp)
					return
				}
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
}

// TestHeaderLayouts: the service recognises a cached session by the hash
// of the header part its own client writes. A token whose header says the
// same in another layout (as another JOSE library may write it) is served
// through the full parse; and a request seen in one layout is still a
// replay in the other, because replays are keyed by session, not header.
func TestHeaderLayouts(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	sess := rawExchange(t, e.url, key)
	kid := base64.RawURLEncoding.EncodeToString(sess.Ticket)
	foreign := `{"typ":"jwc-req", "kid":"` + kid + `", "alg":"HS512"}`
	claims := func(id string) *jwc.Claims {
		return covered(&jwc.Claims{Method: "GET", Target: "/v1/whoami", IssuedAt: e.clock.Now().Unix(), ID: id, BodyHash: jwc.BodyHash(nil)}, nil)
	}
	get := func(token string) (*http.Response, []byte) {
		return e.send(t, sess, request{method: "GET", path: "/v1/whoami", token: token})
	}

	if resp, b := get(signWithHeader(sess.AK[:], foreign, claims(jwc.NewID()))); resp.StatusCode != 200 {
		t.Fatalf("a token in another header layout, first of its session: %d %s", resp.StatusCode, b)
	}
	id := jwc.NewID()
	canonical, _ := jwc.SignOnce(sess.AK[:], sess.Ticket, jwc.TypeRequest, claims(id))
	if resp, b := get(canonical); resp.StatusCode != 200 {
		t.Fatalf("the client's own layout after another: %d %s", resp.StatusCode, b)
	}
	if resp, b := get(signWithHeader(sess.AK[:], foreign, claims(jwc.NewID()))); resp.StatusCode != 200 {
		t.Fatalf("another layout, session cached: %d %s", resp.StatusCode, b)
	}
	resp, b := get(signWithHeader(sess.AK[:], foreign, claims(id)))
	wantRefusal(t, "a jti already used, in another header layout", resp, b, 401, exchange.BadAuthentication)
	resp, b = get(signWithHeader(sess.RK[:], foreign, claims(jwc.NewID())))
	wantRefusal(t, "another layout under the wrong key", resp, b, 401, exchange.BadAuthentication)
}

// signWithHeader makes a compact HS512 JWS with the given header JSON.
func signWithHeader(key []byte, header string, c *jwc.Claims) string {
	payload, _ := json.Marshal(c)
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString(payload)
	m := hmac.New(sha512.New, key)
	m.Write([]byte(input))
	return input + "." + enc.EncodeToString(m.Sum(nil))
}

// TestRemovedCredentialStaysRemoved performs attack 2 of the security
// review: carol's (perhaps stolen) key has a live session; the operator
// removes carol and adds her again with a new key. The old key's session
// and its rekeys must stop within 30 s, not come back to life; the same
// for a credential removed on its own with `account remove-credential`.
func TestRemovedCredentialStaysRemoved(t *testing.T) {
	ctx := context.Background()
	for _, how := range []string{"account removed and added again", "credential removed"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t, sqliteDSN(t))
			stolen := e.register(t, "carol@example.com")
			sess := rawExchange(t, e.url, stolen)
			if resp, _ := e.send(t, sess, request{method: "GET", path: "/v1/whoami"}); resp.StatusCode != 200 {
				t.Fatal(resp.Status)
			}
			switch how {
			case "account removed and added again":
				if err := e.reg.Remove(ctx, "carol@example.com"); err != nil {
					t.Fatal(err)
				}
				e.register(t, "carol@example.com") // a new key
			default:
				e.register(t, "carol@example.com") // a second key, which stays
				if err := e.reg.RemoveCredential(ctx, "carol@example.com", stolen.Public().KeyID()); err != nil {
					t.Fatal(err)
				}
			}
			e.clock.Advance(30 * time.Second)
			resp, b := e.send(t, sess, request{method: "GET", path: "/v1/whoami"})
			wantRefusal(t, "old key's session", resp, b, 403, exchange.UnknownCredential)
			if status, m := e.rekey(t, e.url, sess); status != 403 || m.Error != string(exchange.UnknownCredential) {
				t.Fatalf("rekey of the old key's session: %d %s", status, m.Error)
			}
		})
	}
}

// injector is an on-path attacker between the client and the service: it
// adds headers to every request after the client has signed it.
type injector struct {
	base   http.RoundTripper
	header http.Header
}

func (i injector) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, vs := range i.header {
		r.Header[k] = vs
	}
	return i.base.RoundTrip(r)
}

// TestUpstreamSeesOnlyTrustedHeaders checks what reaches an upstream
// (SPEC §6): never Authorization, no header whose name has "_" or starts
// with custos- or jwc- (attack 9), the account header set by the service
// alone; and that an upstream's 1xx before its answer does not become the
// signed status (attack 8).
func TestUpstreamSeesOnlyTrustedHeaders(t *testing.T) {
	seen := make(chan http.Header, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Write([]byte("upstream answer"))
	}))
	defer up.Close()
	upURL, _ := url.Parse(up.URL)
	e := newEnv(t, sqliteDSN(t), func(c *httpapi.Config) { c.Upstream = upURL })
	key := e.register(t, "alice@example.com")
	hc := &http.Client{Transport: &client.Transport{Key: key, Now: e.clock.Now, Base: injector{http.DefaultTransport, http.Header{
		"Custos_account": {"admin@example.com"},
		"Custos-Account": {"admin@example.com"},
		"Jwc-Signature":  {"forged"},
		"X-Jwc-Ok":       {"kept"},
	}}}}
	resp, err := hc.Get(e.url + "/api/data")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "upstream answer" {
		t.Fatalf("through the proxy: %d %q", resp.StatusCode, b)
	}
	h := <-seen
	if got := h.Values("Custos-Account"); len(got) != 1 || got[0] != "alice@example.com" {
		t.Errorf("Custos-Account reaching the upstream: %q", got)
	}
	// The injected headers are not covered by the client's signature, so
	// none of them is passed on, whatever its name (attack 4's way in).
	for _, name := range []string{"Authorization", "Custos_account", "Jwc-Signature", "X-Jwc-Ok"} {
		if v, ok := h[name]; ok {
			t.Errorf("%s reached the upstream: %q", name, v)
		}
	}
}
