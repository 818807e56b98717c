package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-kx/custos/client"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/softhsm"
)

// The attacks of the security review (issue 12), each performed for real
// through an on-path relay between a real client.Transport and the
// service with its keys in a real SoftHSM token.

// upstream is a service behind Custos that records what reaches it.
type upstream struct {
	mu        sync.Mutex
	transfers int
	headers   []http.Header
	bodies    [][]byte
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.headers = append(u.headers, r.Header.Clone())
	u.bodies = append(u.bodies, body)
	if r.URL.Path == "/api/transfer" {
		u.transfers++
	}
	u.mu.Unlock()
	switch r.URL.Path {
	case "/api/secret":
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("the upstream's secret"))
	case "/api/redirect":
		http.Redirect(w, r, "/api/secret", http.StatusTemporaryRedirect)
	case "/api/speaks-for-custos":
		// An upstream must not speak for the service.
		w.Header().Set("JWC-Error", "BadAuthentication")
		w.Header().Set("JWC-Signature", "forged")
		w.Header().Add("WWW-Authenticate", `JWC error="BadAuthentication"`)
		w.Header().Add("WWW-Authenticate", `Basic realm="upstream"`)
		w.Write([]byte("fine"))
	default:
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"ok":true}`))
	}
}

func (u *upstream) last() (http.Header, []byte) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.headers) == 0 {
		return nil, nil
	}
	return u.headers[len(u.headers)-1], u.bodies[len(u.bodies)-1]
}

func (u *upstream) count() (requests, transfers int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.headers), u.transfers
}

// attackRig is a service fronting an upstream, alice registered, and a
// relay in front of the service; alice's client talks to the relay.
type attackRig struct {
	e     *env
	up    *upstream
	relay *relay
	key   *exchange.ClientKey
	tr    *client.Transport
	hc    *http.Client
}

func newAttackRig(t *testing.T, encrypt bool) *attackRig {
	up := &upstream{}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)
	upURL, _ := url.Parse(upSrv.URL)
	e := newEnv(t, sqliteDSN(t), func(c *httpapi.Config) { c.Upstream = upURL })
	rig := &attackRig{e: e, up: up, relay: newRelay(t, e.url), key: e.register(t, "alice@example.com")}
	rig.tr = &client.Transport{Key: rig.key, Encrypt: encrypt, Now: e.clock.Now}
	rig.hc = &http.Client{Transport: rig.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return rig
}

func (r *attackRig) do(t *testing.T, method, path, contentType string, body []byte) (*http.Response, []byte, error) {
	t.Helper()
	req, _ := http.NewRequest(method, r.relay.url+path, bytes.NewReader(body))
	if body == nil {
		req.Body = nil
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b, nil
}

// Attack 1: encryption stripped. The attacker rewrites the one header
// that used to decide encryption, and swaps an encrypted answer for a
// plaintext one; encryption is decided by the signed enc claim now.
func TestAttackEncryptionStripped(t *testing.T) {
	rig := newAttackRig(t, true)
	secret := []byte("account 12, amount 1000")

	// Untouched: the upstream sees the plaintext with its own media type;
	// the attacker sees neither the request nor the answer in clear.
	var answers [][]byte
	rig.relay.set(nil, func(_, resp *capture) *capture { answers = append(answers, resp.Body); return resp })
	resp, b, err := rig.do(t, http.MethodPost, "/api/transfer", "text/csv", secret)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("encrypted request: %v %v", err, resp)
	}
	h, got := rig.up.last()
	if !bytes.Equal(got, secret) || h.Get("Content-Type") != "text/csv" {
		t.Fatalf("the upstream saw %q as %q, want the plaintext as text/csv", got, h.Get("Content-Type"))
	}
	if resp, b, err = rig.do(t, http.MethodGet, "/api/secret", "", nil); err != nil || string(b) != "the upstream's secret" {
		t.Fatalf("encrypted GET: %v %q", err, b)
	}
	for _, req := range rig.relay.requests() {
		if bytes.Contains(req.Body, secret) {
			t.Fatal("the relay saw the request body in clear")
		}
	}
	for _, a := range answers {
		if bytes.Contains(a, []byte("secret")) || bytes.Contains(a, []byte(`"ok"`)) {
			t.Fatalf("the relay saw an answer in clear: %q", a)
		}
	}

	// The header rewritten on the way in: the service refuses the
	// request (signed, before any handler) and nothing reaches the upstream.
	before, _ := rig.up.count()
	rig.relay.set(func(r *capture) *capture {
		if r.Header.Get("Content-Type") == "application/jose" {
			r.Header.Set("Content-Type", "application/json")
		}
		return nil
	}, nil)
	if _, _, err := rig.do(t, http.MethodPost, "/api/transfer", "text/csv", secret); err == nil {
		t.Fatal("a request whose Content-Type was rewritten was answered")
	}
	if after, _ := rig.up.count(); after != before {
		t.Fatal("a request whose Content-Type was rewritten reached the upstream")
	}

	// A plaintext answer in place of the encrypted one: the client refuses it.
	rig.relay.set(nil, func(req, resp *capture) *capture {
		resp.Header.Set("Content-Type", "text/plain")
		resp.Body = []byte("the upstream's secret")
		return resp
	})
	if _, _, err := rig.do(t, http.MethodGet, "/api/secret", "", nil); err == nil {
		t.Fatal("the client accepted a plaintext answer to an encrypted request")
	}
}

// Attack 3: a POST ran twice. The attacker lets the request through,
// answers with a fake 401, or with a genuine signed refusal got by
// replaying the same token to another target; the client must not send
// the POST again by itself, and must not take either refusal as the answer.
func TestAttackPostRunsTwice(t *testing.T) {
	rig := newAttackRig(t, false)
	if _, _, err := rig.do(t, http.MethodGet, "/api/secret", "", nil); err != nil {
		t.Fatal(err) // a session first
	}

	// Trick 1: the real answer held back, an unsigned 401 in its place.
	rig.relay.set(nil, func(req, resp *capture) *capture {
		if req.Path != "/api/transfer" {
			return resp
		}
		return &capture{Status: 401, Header: http.Header{
			"Content-Type":     {"application/json"},
			"Www-Authenticate": {`JWC error="BadAuthentication"`},
			"Jwc-Error":        {"BadAuthentication"},
		}, Body: []byte(`{"ExchangeResponse":{"Status":401,"StatusDescription":"No.","Error":"BadAuthentication"}}`)}
	})
	_, _, err := rig.do(t, http.MethodPost, "/api/transfer", "application/json", []byte(`{"amount":1000}`))
	var se *client.ServiceError
	if !errors.As(err, &se) || !se.MayHaveRun || !strings.Contains(se.Error(), "may have reached the service") {
		t.Fatalf("a refused POST: %v; want an error saying it may have reached the service", err)
	}
	if _, n := rig.up.count(); n != 1 {
		t.Fatalf("the transfer ran %d times, want once", n)
	}

	// Trick 2: the same token replayed to another path gets a genuine,
	// signed refusal, which the relay passes off as the answer.
	rig.relay.set(nil, func(req, resp *capture) *capture {
		if req.Path != "/api/transfer" {
			return resp
		}
		other := *req
		other.Path = "/api/other"
		refusal := rig.relay.forward(&other)
		if refusal.Status != 401 || refusal.Header.Get("JWC-Signature") == "" {
			t.Errorf("the replay to another path: %d, signed %v", refusal.Status, refusal.Header.Get("JWC-Signature") != "")
		}
		return refusal
	})
	if _, _, err := rig.do(t, http.MethodPost, "/api/transfer", "application/json", []byte(`{"amount":1000}`)); err == nil {
		t.Fatal("a signed refusal of another request passed for the answer")
	}
	if _, n := rig.up.count(); n != 2 {
		t.Fatalf("after two tricks the transfer ran %d times, want twice (once each)", n)
	}

	// A GET refused the same way is renewed and sent again: it is idempotent.
	fakes := 0
	rig.relay.set(nil, func(req, resp *capture) *capture {
		if req.Path == "/api/secret" && fakes == 0 {
			fakes++
			return &capture{Status: 401, Header: http.Header{"Jwc-Error": {"BadAuthentication"}}, Body: nil}
		}
		return resp
	})
	if resp, b, err := rig.do(t, http.MethodGet, "/api/secret", "", nil); err != nil || resp.StatusCode != 200 || string(b) != "the upstream's secret" {
		t.Fatalf("a refused GET was not renewed and sent again: %v %q", err, b)
	}
}

// Attack 4: headers unsigned. On the way in the attacker injects and
// changes headers; on the way out he changes Content-Type, injects
// Set-Cookie and rewrites the Location of a signed redirect.
func TestAttackHeadersUnsigned(t *testing.T) {
	rig := newAttackRig(t, false)

	// In: an injected header does not reach the upstream; a header the
	// program set does, covered by the signature.
	rig.relay.set(func(r *capture) *capture { r.Header.Set("X-Role", "admin"); return nil }, nil)
	req, _ := http.NewRequest(http.MethodGet, rig.relay.url+"/api/data", nil)
	req.Header.Set("X-Request-Tag", "mine")
	resp, err := rig.hc.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", err, resp)
	}
	resp.Body.Close()
	h, _ := rig.up.last()
	if h.Get("X-Role") != "" || h.Get("X-Request-Tag") != "mine" {
		t.Fatalf("the upstream saw X-Role %q and X-Request-Tag %q", h.Get("X-Role"), h.Get("X-Request-Tag"))
	}
	// In: a covered header changed: refused.
	before, _ := rig.up.count()
	rig.relay.set(func(r *capture) *capture { r.Header.Set("Content-Type", "text/html"); return nil }, nil)
	if _, _, err := rig.do(t, http.MethodPost, "/api/data", "application/json", []byte(`{}`)); err == nil {
		t.Fatal("a request whose Content-Type was changed on the way was answered")
	}
	if after, _ := rig.up.count(); after != before {
		t.Fatal("a request whose Content-Type was changed reached the upstream")
	}

	// Out: each rewrite of a covered header is refused; an injected
	// header is removed before the program sees the response.
	for name, rewrite := range map[string]func(*capture){
		"Content-Type changed": func(c *capture) { c.Header.Set("Content-Type", "text/html") },
		"Location rewritten":   func(c *capture) { c.Header.Set("Location", "https://attacker.example/steal") },
	} {
		rig.relay.set(nil, func(req, resp *capture) *capture {
			if req.Path == "/api/redirect" || req.Path == "/api/secret" {
				rewrite(resp)
			}
			return resp
		})
		path := "/api/secret"
		if name == "Location rewritten" {
			path = "/api/redirect"
		}
		if _, _, err := rig.do(t, http.MethodGet, path, "", nil); err == nil {
			t.Errorf("%s: the client accepted the response", name)
		}
	}
	rig.relay.set(nil, func(req, resp *capture) *capture {
		resp.Header.Set("Set-Cookie", "session=attacker")
		return resp
	})
	resp, b, err := rig.do(t, http.MethodGet, "/api/redirect", "", nil)
	if err != nil || resp.StatusCode != 307 || resp.Header.Get("Location") != "/api/secret" || resp.Header.Get("Set-Cookie") != "" {
		t.Fatalf("a signed redirect with an injected cookie: %v %v %q", err, resp, b)
	}

	// An upstream does not speak for the service: its JWC-* headers and
	// JWC challenges are removed, the rest kept and signed.
	rig.relay.set(nil, nil)
	resp, b, err = rig.do(t, http.MethodGet, "/api/speaks-for-custos", "", nil)
	if err != nil || string(b) != "fine" {
		t.Fatalf("%v %q", err, b)
	}
	if resp.Header.Get("JWC-Error") != "" || len(resp.Header.Values("WWW-Authenticate")) != 1 || resp.Header.Get("WWW-Authenticate") != `Basic realm="upstream"` {
		t.Fatalf("the upstream's JWC headers reached the client: %v", resp.Header)
	}
}

// Attack 5: a cached ticket outlived its key. After the ticket key is
// rotated and the old one pruned, a session opened before (and held in
// memory) is refused, and cannot be rekeyed.
func TestAttackPrunedTicketKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	sess := rawExchange(t, e.url, key)
	if resp, _ := e.send(t, sess, request{method: "GET", path: "/v1/whoami"}); resp.StatusCode != 200 {
		t.Fatal(resp.Status) // now cached
	}
	if _, err := e.ks.RotateTicketKey(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ks.Prune(ctx, 0, false); err != nil {
		t.Fatal(err)
	}
	resp, b := e.send(t, sess, request{method: "GET", path: "/v1/whoami"})
	wantRefusal(t, "session of a pruned key", resp, b, 401, exchange.BadAuthentication)
	if status, m := e.rekey(t, e.url, sess); status != 401 || m.Error != string(exchange.BadAuthentication) {
		t.Fatalf("rekey of a session of a pruned key: %d %s", status, m.Error)
	}
}

// opens counts the token's ticket opens so far.
func opens(t *testing.T) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(hsm.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "custos_hsm_operation_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == "open" {
					return float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return 0
}

// Attack 7: strangers spent token time. A flood of forged tickets naming
// the active key costs at most the per-address budget of token opens;
// valid sessions keep working.
func TestAttackForgedTicketFlood(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	sess := rawExchange(t, e.url, key)
	if resp, _ := e.send(t, sess, request{method: "GET", path: "/v1/whoami"}); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	start, began := opens(t), time.Now()
	limited := 0
	for i := 0; i < 200; i++ {
		forged := bytes.Clone(sess.Ticket)
		rand.Read(forged[21:]) // the active key's id, anything after it
		resp, _ := e.send(t, sess, request{method: "GET", path: "/v1/whoami", ticket: forged})
		switch resp.StatusCode {
		case 429:
			limited++
		case 401:
		default:
			t.Fatalf("a forged ticket got %d", resp.StatusCode)
		}
	}
	spent := opens(t) - start
	budget := float64(httpapi.DefaultFailedOpenBurst) + httpapi.DefaultFailedOpens*time.Since(began).Seconds() + 1
	if spent > budget || limited == 0 {
		t.Fatalf("200 forged tickets cost %.0f token opens (budget %.0f), %d refused 429", spent, budget, limited)
	}
	if resp, _ := e.send(t, sess, request{method: "GET", path: "/v1/whoami"}); resp.StatusCode != 200 {
		t.Fatalf("a valid session during the flood: %d", resp.StatusCode)
	}
	t.Logf("200 forged tickets: %.0f token opens, %d refused 429 without one", spent, limited)
}

// Attack 14: one RK renewed the same ticket several times, forking the
// session. A ticket is renewed at most once, on every replica.
func TestAttackRenewTwice(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	key := e.register(t, "alice@example.com")
	sess := rawExchange(t, e.url, key)
	// A second replica: the same token and registry, its own caches.
	replica := httptest.NewServer(httpapi.New(httpapi.Config{
		Engine: &exchange.Server{Keystore: e.ks, Accounts: e.reg, Now: e.clock.Now},
		Now:    e.clock.Now, Limits: httpapi.Limits{PerAddress: -1, PerAccount: -1},
	}))
	defer replica.Close()
	if status, m := e.rekey(t, e.url, sess); status != 200 {
		t.Fatalf("first rekey: %d %+v", status, m)
	}
	for _, url := range []string{e.url, replica.URL} {
		status, m := e.rekey(t, url, sess)
		if status != 401 || m.Error != string(exchange.BadAuthentication) || !strings.Contains(m.StatusDescription, "already renewed") {
			t.Fatalf("second rekey of the same ticket at %s: %d %+v", url, status, m)
		}
	}
}

// Attack 12: client state per origin, not per credential. Two keys share
// one State: each answers as itself; a pin set after a session was kept
// is checked when it is used.
func TestAttackWrongCredentialSession(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	alice, bob := e.register(t, "alice@example.com"), e.register(t, "bob@example.com")
	state := &client.State{Dir: t.TempDir()}
	whoami := func(tr *client.Transport) (string, error) {
		resp, err := (&http.Client{Transport: tr}).Get(e.url + "/v1/whoami")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		var who struct{ Account string }
		json.NewDecoder(resp.Body).Decode(&who)
		return who.Account, nil
	}
	for _, c := range []struct {
		key  *exchange.ClientKey
		want string
	}{{alice, "alice@example.com"}, {bob, "bob@example.com"}, {alice, "alice@example.com"}} {
		if got, err := whoami(&client.Transport{Key: c.key, State: state, Now: e.clock.Now}); err != nil || got != c.want {
			t.Fatalf("answered as %q (%v), want %q", got, err, c.want)
		}
	}
	_, err := whoami(&client.Transport{Key: alice, State: state, Now: e.clock.Now, PinnedKID: "MAAAA-AAAAA-AAAAA-AAAAA-AAAAA-AAAAA"})
	var pe *client.PinError
	if !errors.As(err, &pe) {
		t.Fatalf("a kept session with another credential than the pinned one: %v", err)
	}
}

// Attack 11: PINs where they must not be. A PIN in the pkcs11-uri given
// on the command line or in the config file is refused; an explicit
// --pin-file wins over CUSTOS_PIN; a PIN file others can read is refused.
func TestAttackPINSources(t *testing.T) {
	st := softhsm.New(t)
	dir := t.TempDir()
	base := custosdEnv(st, filepath.Join(dir, "custos.db"))
	runCustosd(t, base, "init")
	try := func(env []string, args ...string) (string, error) { return tryCustosd(t, env, args...) }
	uri := "pkcs11:token=" + url.PathEscape(st.Label) + "?module-path=" + st.Module + "&pin-value=" + st.PIN
	// The URI names the token by itself: no module or label beside it.
	var uriBase []string
	for _, kv := range base {
		if !strings.HasPrefix(kv, "CUSTOS_PKCS11_MODULE=") && !strings.HasPrefix(kv, "CUSTOS_TOKEN_LABEL=") {
			uriBase = append(uriBase, kv)
		}
	}
	if out, err := try(base, "keys", "list", "--pkcs11-uri", uri); err == nil || !strings.Contains(out, "not both") {
		t.Fatalf("--pkcs11-uri beside --pkcs11-module: %v\n%s", err, out)
	}
	if out, err := try(uriBase, "keys", "list", "--pkcs11-uri", uri); err == nil || !strings.Contains(out, "only from the environment") || strings.Contains(out, st.PIN) {
		t.Fatalf("pin-value on the command line: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "custos.json")
	os.WriteFile(cfg, []byte(`{"pkcs11-uri": "`+uri+`"}`), 0o600)
	if out, err := try(uriBase, "keys", "list", "--config", cfg); err == nil || !strings.Contains(out, "only from the environment") {
		t.Fatalf("pin-value in the config file: %v\n%s", err, out)
	}
	if out, err := try(append(uriBase, "CUSTOS_PKCS11_URI="+uri), "keys", "list"); err != nil {
		t.Fatalf("pin-value in the environment: %v\n%s", err, out)
	}
	pinFile := filepath.Join(dir, "pin")
	os.WriteFile(pinFile, []byte(st.PIN+"\n"), 0o600)
	wrongPIN := append(base, "CUSTOS_PIN=not-the-pin")
	if out, err := try(wrongPIN, "keys", "list", "--pin-file", pinFile); err != nil {
		t.Fatalf("an explicit --pin-file beside a wrong CUSTOS_PIN: %v\n%s", err, out)
	}
	os.Chmod(pinFile, 0o644)
	if out, err := try(wrongPIN, "keys", "list", "--pin-file", pinFile); err == nil || !strings.Contains(out, "can be read by others") {
		t.Fatalf("a PIN file readable by others: %v\n%s", err, out)
	}
}
