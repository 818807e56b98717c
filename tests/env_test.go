// Package tests holds Custos's end-to-end tests: a real service on
// 127.0.0.1 with its keys in a real SoftHSM2 token and a real registry.
package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/hsm"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/wire"
	"github.com/custos-kx/custos/keystore/p11"
	"github.com/custos-kx/custos/softhsm"
	"github.com/custos-kx/custos/tests/cluster"
)

// statusTTL is a little more than the time the engine trusts an account's
// status (exchange.Server.StatusTTL's default): a test that changes an
// account and wants the change seen moves its clock this far.
const statusTTL = 11 * time.Second

// clock is a settable clock shared by the service and the test.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

type env struct {
	url     string
	tok     *hsm.Token
	ks      *p11.Keystore
	reg     *accounts.Registry
	clock   *clock
	svc     *httpapi.Service
	metrics *prometheus.Registry
}

func sqliteDSN(t *testing.T) string { return filepath.Join(t.TempDir(), "custos.db") }

// newEnv starts a service on 127.0.0.1 with a fresh token and registry.
func newEnv(t *testing.T, dsn string, tune ...func(*httpapi.Config)) *env {
	t.Helper()
	return newEnvToken(t, dsn, nil, tune...)
}

// newEnvToken is newEnv with a say in how the token is opened.
func newEnvToken(t *testing.T, dsn string, tuneToken func(*hsm.Config), tune ...func(*httpapi.Config)) *env {
	t.Helper()
	ctx := context.Background()
	st := softhsm.New(t)
	hc := hsm.Config{Module: st.Module, TokenLabel: st.Label, PIN: st.PIN}
	if tuneToken != nil {
		tuneToken(&hc)
	}
	tok, err := hsm.Open(ctx, hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	ks, err := p11.Open(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ks.Init(ctx); err != nil {
		t.Fatal(err)
	}
	reg, err := accounts.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	e := &env{tok: tok, ks: ks, reg: reg, clock: &clock{}, metrics: prometheus.NewRegistry()}
	e.metrics.MustRegister(httpapi.Collectors()...)
	cfg := httpapi.Config{
		Engine:  &exchange.Server{Keystore: ks, Accounts: reg, Now: e.clock.Now},
		Ready:   tok.Healthy,
		Now:     e.clock.Now,
		Logger:  failureLog(t),
		Metrics: e.metrics,
		// Tests exchange far faster than any client; limits_test.go
		// turns the limits on.
		Limits: httpapi.Limits{PerAddress: -1, PerAccount: -1},
	}
	for _, f := range tune {
		f(&cfg)
	}
	e.svc = httpapi.New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: e.svc}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	e.url = "http://" + ln.Addr().String()
	return e
}

// failureLog is a logger whose lines the test shows only if it fails: a
// 500 says nothing of its cause, the service's log does.
func failureLog(t *testing.T) *slog.Logger {
	var log cluster.Log
	t.Cleanup(func() {
		if s := log.String(); t.Failed() && s != "" {
			t.Logf("the service's log:\n%s", s)
		}
	})
	return slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// register makes a credential for account and registers it.
func (e *env) register(t *testing.T, account string) *exchange.ClientKey {
	t.Helper()
	return e.registerProfile(t, account, exchange.ModP2048)
}

// registerProfile makes a credential of profile p for account and registers it.
func (e *env) registerProfile(t *testing.T, account string, p exchange.Profile) *exchange.ClientKey {
	t.Helper()
	k, err := exchange.GenerateClientKey(rand.Reader, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Add(context.Background(), account, k.Public()); err != nil {
		t.Fatal(err)
	}
	return k
}

// post sends body to the jwcexchange endpoint and decodes the answer.
func post(t *testing.T, url string, body []byte, auth string) (int, *wire.ExchangeResponse, http.Header) {
	t.Helper()
	h := http.Header{}
	if auth != "" {
		h.Set("Authorization", "JWC "+auth)
	}
	return postWith(t, url, body, h)
}

// postWith sends body to the jwcexchange endpoint with the headers h and
// decodes the answer.
func postWith(t *testing.T, url string, body []byte, h http.Header) (int, *wire.ExchangeResponse, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+httpapi.WellKnown, bytes.NewReader(body))
	req.Header = h.Clone()
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m wire.ExchangeResponse
	if err := wire.Unmarshal(b, &m); err != nil {
		t.Fatalf("response to %s is not an ExchangeResponse (%v): %s", url, err, b)
	}
	return resp.StatusCode, &m, resp.Header
}

// rawExchange runs an exchange with the engine alone, so tests can forge
// requests with the session's keys.
func rawExchange(t *testing.T, url string, key *exchange.ClientKey) *exchange.Session {
	t.Helper()
	pending, msg, _ := key.NewExchange(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	status, resp, _ := post(t, url, body, "")
	if status != http.StatusOK {
		t.Fatalf("exchange: %d %s %s", status, resp.Error, resp.StatusDescription)
	}
	sess, err := pending.Finish(resp)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// request describes one authenticated request to forge.
type request struct {
	method, path string
	body         []byte
	claims       *jwc.Claims // nil: correct claims for method, path, body, now
	key          []byte      // nil: the session's AK
	ticket       []byte      // nil: the session's ticket
	typ          string      // "": jwc-req
	token        string      // if set, sent as is
}

func (e *env) send(t *testing.T, sess *exchange.Session, r request) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(r.method, e.url+r.path, bytes.NewReader(r.body))
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.claims == nil {
		r.claims = &jwc.Claims{Method: r.method, Target: r.path, IssuedAt: e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(r.body)}
	}
	covered(r.claims, req.Header)
	if r.key == nil {
		r.key = sess.AK[:]
	}
	if r.ticket == nil {
		r.ticket = sess.Ticket
	}
	if r.typ == "" {
		r.typ = jwc.TypeRequest
	}
	if r.token == "" {
		var err error
		if r.token, err = jwc.SignOnce(r.key, r.ticket, r.typ, r.claims); err != nil {
			t.Fatal(err)
		}
	}
	req.Header.Set("Authorization", "JWC "+r.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// rekey sends a rekey of sess to url, signed as a client signs it, and
// returns the answer.
func (e *env) rekey(t *testing.T, url string, sess *exchange.Session) (int, *wire.ExchangeResponse) {
	t.Helper()
	_, msg, _ := sess.NewRekey(rand.Reader, nil)
	body, _ := json.Marshal(msg)
	auth, err := sess.SignRekey(body, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	status, m, _ := post(t, url, body, strings.TrimPrefix(auth, "JWC "))
	return status, m
}

// covered fills the claims' hds and hdh (SPEC §6) for the headers h holds
// (Authorization aside), as a client would, unless the test set them.
func covered(c *jwc.Claims, h http.Header) *jwc.Claims {
	if c.Headers != nil {
		return c
	}
	c.Headers = []string{}
	for k := range h {
		if k != "Authorization" {
			c.Headers = append(c.Headers, strings.ToLower(k))
		}
	}
	slices.Sort(c.Headers)
	c.HeaderHash, _ = jwc.HeaderHash(c.Headers, h)
	return c
}

// wantRefusal checks a refusal's status, SPEC code and headers.
func wantRefusal(t *testing.T, name string, resp *http.Response, body []byte, status int, code exchange.Code) {
	t.Helper()
	var m wire.ExchangeResponse
	if err := wire.Unmarshal(body, &m); err != nil {
		t.Errorf("%s: body is not an ExchangeResponse: %s", name, body)
		return
	}
	if resp.StatusCode != status || m.Error != string(code) || m.Status != status || m.StatusDescription == "" {
		t.Errorf("%s: got %d %s (%s), want %d %s", name, resp.StatusCode, m.Error, m.StatusDescription, status, code)
	}
	if status == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") != `JWC error="`+string(code)+`"` {
		t.Errorf("%s: WWW-Authenticate = %q", name, resp.Header.Get("WWW-Authenticate"))
	}
}

// refusals counts authenticated requests the service has refused so far.
func (e *env) refusals(t *testing.T) float64 {
	t.Helper()
	mfs, err := e.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "custos_authenticated_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() != "ok" {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
