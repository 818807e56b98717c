package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-kx/custos/accounts"
	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/testclock"
	"github.com/custos-kx/custos/keystore"
)

// The Transport's session state machine against a real service on an
// httptest server: what it sends is counted on the wire, and time moves
// only when the test moves the clock the client and the service share.

const (
	lifetime = time.Hour
	window   = 24 * time.Hour
	margin   = 5 * time.Minute
	alice    = "alice@example.com"
)

// service is a Custos service that can be restarted behind the same URL.
type service struct {
	clock *testclock.Clock
	reg   *accounts.Registry
	url   string
	key   *exchange.ClientKey // alice's credential, registered
	cred  *group.Scalar       // the service credential, kept across restarts
	// refuseAll answers every request under a session 401
	// BadAuthentication, as a service that never accepts a session would.
	refuseAll atomic.Bool

	mu sync.Mutex
	h  http.Handler
}

func newService(t *testing.T) *service {
	t.Helper()
	ctx := context.Background()
	reg, err := accounts.Open(ctx, filepath.Join(t.TempDir(), "custos.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	s := &service{clock: testclock.New(), reg: reg}
	if s.key, err = exchange.GenerateClientKey(rand.Reader, exchange.ModP2048); err != nil {
		t.Fatal(err)
	}
	if err := reg.Add(ctx, alice, s.key.Public()); err != nil {
		t.Fatal(err)
	}
	s.restart(t, true)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

// restart replaces the service by a new process: a fresh engine (no
// opened tickets in memory) over a keystore with a new ticket key, so no
// earlier ticket opens. newCredential also replaces the service
// credential, as a rotation would.
func (s *service) restart(t *testing.T, newCredential bool) {
	t.Helper()
	ks, err := keystore.NewSoftware(nil)
	if err != nil {
		t.Fatal(err)
	}
	if newCredential || s.cred == nil {
		if s.cred, err = group.GenerateScalar(rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	ks.AddCredential(s.cred)
	h := httpapi.New(httpapi.Config{
		Engine: &exchange.Server{Keystore: ks, Accounts: s.reg, Now: s.clock.Now, SessionLifetime: lifetime, RekeyWindow: window},
		Logger: slog.New(slog.DiscardHandler),
		Limits: httpapi.Limits{PerAddress: -1, PerAccount: -1},
		Now:    s.clock.Now,
	})
	s.mu.Lock()
	s.h = h
	s.mu.Unlock()
}

func (s *service) credentialKID() string { return s.cred.Public().KeyID() }

func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.refuseAll.Load() && r.URL.Path != WellKnown {
		w.Header().Set("WWW-Authenticate", `JWC error="BadAuthentication"`)
		w.Header().Set("JWC-Error", "BadAuthentication")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"ExchangeResponse":{"Status":401,"StatusDescription":"No.","Error":"BadAuthentication"}}`))
		return
	}
	s.mu.Lock()
	h := s.h
	s.mu.Unlock()
	h.ServeHTTP(w, r)
}

// wireLog records what a Transport sends, one event per request:
// "exchange" (POST to the jwcexchange endpoint without Authorization),
// "rekey" (with it), or method and path, each with the status answered.
type wireLog struct {
	base http.RoundTripper

	mu      sync.Mutex
	events  []string
	headers []http.Header
	bodies  [][]byte
}

func (l *wireLog) RoundTrip(r *http.Request) (*http.Response, error) {
	event := r.Method + " " + r.URL.Path
	if r.Method == http.MethodPost && r.URL.Path == WellKnown {
		event = "exchange"
		if r.Header.Get("Authorization") != "" {
			event = "rekey"
		}
	}
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body.Close()
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	resp, err := l.base.RoundTrip(r)
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	l.mu.Lock()
	l.events = append(l.events, event+" "+status)
	l.headers = append(l.headers, r.Header.Clone())
	l.bodies = append(l.bodies, body)
	l.mu.Unlock()
	return resp, err
}

// take returns the events since the last take.
func (l *wireLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ev := l.events
	l.events, l.headers, l.bodies = nil, nil, nil
	return ev
}

// newTransport is a Transport for s with the service's lifetimes, its
// requests logged.
func newTransport(s *service, st *State) (*Transport, *wireLog) {
	wl := &wireLog{base: http.DefaultTransport}
	return &Transport{Key: s.key, State: st, Base: wl, Now: s.clock.Now,
		SessionLifetime: lifetime, RekeyWindow: window, RenewMargin: margin}, wl
}

type who struct {
	Account    string `json:"account"`
	Generation uint32 `json:"generation"`
}

// get sends GET /v1/whoami through tr.
func get(tr *Transport, s *service) (int, *who, *http.Response, error) {
	resp, err := (&http.Client{Transport: tr}).Get(s.url + "/v1/whoami")
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, err
	}
	var w who
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &w); err != nil {
			return 0, nil, nil, err
		}
	}
	return resp.StatusCode, &w, resp, nil
}

// whoami is get that must succeed.
func whoami(t *testing.T, tr *Transport, s *service) *who {
	t.Helper()
	status, w, _, err := get(tr, s)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusOK || w.Account != alice {
		t.Fatalf("whoami: %d %+v", status, w)
	}
	return w
}

func wantWire(t *testing.T, wl *wireLog, want ...string) {
	t.Helper()
	if got := wl.take(); !slices.Equal(got, want) {
		t.Errorf("on the wire %q, want %q", got, want)
	}
}

// TestSessionStateMachine walks a Transport through a session's life:
// the first request exchanges, the next reuse the session, one past
// SessionLifetime−RenewMargin since the last renewal rekeys first (never
// waiting for a refusal), and one due for renewal past
// RekeyWindow−RenewMargin since the exchange exchanges again.
func TestSessionStateMachine(t *testing.T) {
	const renewAt = lifetime - margin // 55 min after the last renewal
	type step struct {
		at   time.Duration // since the start
		wire []string
		gen  uint32
	}
	var (
		exch  = []string{"exchange 200", "GET /v1/whoami 200"}
		rekey = []string{"rekey 200", "GET /v1/whoami 200"}
		use   = []string{"GET /v1/whoami 200"}
	)
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"exchange, use, rekey, exchange again", []step{
			{0, exch, 0},
			{time.Minute, use, 0},
			{renewAt, use, 0}, // not yet: renewal is due after this instant
			{renewAt + time.Second, rekey, 1},
			{renewAt + 2*time.Second, use, 1},
			{2*renewAt + 2*time.Second, rekey, 2},
			{22 * time.Hour, rekey, 3}, // generation 2 ended long ago; the window is open
			{window - margin + time.Second, exch, 0},
			{window - margin + 2*time.Second, use, 0},
		}},
		{"a session rekeyed just before the window closes is used past it", []step{
			{0, exch, 0},
			{window - margin - time.Minute, rekey, 1},
			{window - margin + time.Second, use, 1},
			{window - margin - time.Minute + renewAt + time.Second, exch, 0},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newService(t)
			tr, wl := newTransport(s, nil)
			start := s.clock.Now()
			for _, st := range c.steps {
				s.clock.Advance(start.Add(st.at).Sub(s.clock.Now()))
				if w := whoami(t, tr, s); w.Generation != st.gen {
					t.Errorf("at +%s: generation %d, want %d", st.at, w.Generation, st.gen)
				}
				if got := wl.take(); !slices.Equal(got, st.wire) {
					t.Errorf("at +%s: on the wire %q, want %q", st.at, got, st.wire)
				}
			}
		})
	}
}

// TestRenewsRefusedSession: a session the service refuses with
// BadAuthentication or TicketExpired is renewed once and the request sent
// again; any other refusal is the program's to see.
func TestRenewsRefusedSession(t *testing.T) {
	for _, c := range []struct {
		name   string
		tune   func(*Transport)
		before func(t *testing.T, s *service)
		wire   []string
		status int
		gen    uint32
		code   string // WWW-Authenticate error of a final 401
	}{
		{
			name:   "service restarted: the ticket no longer opens",
			before: func(t *testing.T, s *service) { s.restart(t, false) },
			wire:   []string{"GET /v1/whoami 401", "rekey 401", "exchange 200", "GET /v1/whoami 200"},
			status: 200, gen: 0,
		},
		{
			name:   "client believes sessions last a day",
			tune:   func(tr *Transport) { tr.SessionLifetime = 24 * time.Hour },
			before: func(t *testing.T, s *service) { s.clock.Advance(lifetime + time.Minute) },
			wire:   []string{"GET /v1/whoami 401", "rekey 200", "GET /v1/whoami 200"},
			status: 200, gen: 1,
		},
		{
			name:   "client believes the rekey window lasts a month",
			tune:   func(tr *Transport) { tr.RekeyWindow = 30 * 24 * time.Hour },
			before: func(t *testing.T, s *service) { s.clock.Advance(window + time.Minute) },
			wire:   []string{"rekey 401", "exchange 200", "GET /v1/whoami 200"},
			status: 200, gen: 0,
		},
		{
			name:   "refused again after the renewal: no second renewal",
			before: func(t *testing.T, s *service) { s.refuseAll.Store(true) },
			wire:   []string{"GET /v1/whoami 401", "rekey 200", "GET /v1/whoami 401"},
			status: 401, code: "BadAuthentication",
		},
		{
			name: "account disabled: not renewed",
			before: func(t *testing.T, s *service) {
				if err := s.reg.SetDisabled(context.Background(), alice, true); err != nil {
					t.Fatal(err)
				}
				s.clock.Advance(11 * time.Second) // past the engine's account status TTL
			},
			wire:   []string{"GET /v1/whoami 403"},
			status: 403,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newService(t)
			tr, wl := newTransport(s, nil)
			if c.tune != nil {
				c.tune(tr)
			}
			whoami(t, tr, s)
			wantWire(t, wl, "exchange 200", "GET /v1/whoami 200")
			c.before(t, s)
			status, w, resp, err := get(tr, s)
			if err != nil {
				t.Fatal(err)
			}
			if status != c.status || (status == 200 && w.Generation != c.gen) {
				t.Errorf("%d generation %d, want %d generation %d", status, w.Generation, c.status, c.gen)
			}
			if status == http.StatusUnauthorized && AuthError(resp) != c.code {
				t.Errorf("AuthError %q, want %q", AuthError(resp), c.code)
			}
			wantWire(t, wl, c.wire...)
			if status == 200 {
				whoami(t, tr, s) // the renewed session is kept
				wantWire(t, wl, "GET /v1/whoami 200")
			}
		})
	}
}

// TestExplicitExchangeAndRekey drives the state machine through
// Transport.Exchange and Transport.Rekey.
func TestExplicitExchangeAndRekey(t *testing.T) {
	s := newService(t)
	tr, wl := newTransport(s, nil)
	ctx := context.Background()
	if err := tr.Rekey(ctx, s.url); err != nil { // no session yet: an exchange
		t.Fatal(err)
	}
	wantWire(t, wl, "exchange 200")
	for gen := uint32(1); gen <= 2; gen++ {
		if err := tr.Rekey(ctx, s.url); err != nil {
			t.Fatal(err)
		}
		if w := whoami(t, tr, s); w.Generation != gen {
			t.Errorf("after rekey %d: generation %d", gen, w.Generation)
		}
		wantWire(t, wl, "rekey 200", "GET /v1/whoami 200")
	}
	if err := tr.Exchange(ctx, s.url); err != nil {
		t.Fatal(err)
	}
	if w := whoami(t, tr, s); w.Generation != 0 {
		t.Errorf("after an exchange: generation %d", w.Generation)
	}
	wantWire(t, wl, "exchange 200", "GET /v1/whoami 200")
}

// TestConcurrentFirstRequests: requests racing on a new Transport share
// one exchange.
func TestConcurrentFirstRequests(t *testing.T) {
	s := newService(t)
	tr, wl := newTransport(s, nil)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if status, _, _, err := get(tr, s); err != nil || status != 200 {
				errs <- errors.Join(err, errors.New("status "+strconv.Itoa(status)))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	got := wl.take()
	slices.Sort(got)
	want := append([]string{"exchange 200"}, slices.Repeat([]string{"GET /v1/whoami 200"}, n)...)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("on the wire %q, want one exchange and %d requests", got, n)
	}
}

// TestStatePersists: a State with a Dir keeps the pin and the session, so
// a second Transport (a second run of the program) on the same Dir uses
// the session, rekeys it with the RK it read, and keeps the rekeyed one.
func TestStatePersists(t *testing.T) {
	s := newService(t)
	dir := t.TempDir()
	tr1, wl := newTransport(s, &State{Dir: dir})
	whoami(t, tr1, s)
	wantWire(t, wl, "exchange 200", "GET /v1/whoami 200")

	sessionPath := filepath.Join(dir, sessionFile(s.url, s.key.Public().KeyID()))
	for _, name := range []string{"pins.json", sessionFile(s.url, s.key.Public().KeyID())} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, fi.Mode().Perm())
		}
	}

	tr2, wl := newTransport(s, &State{Dir: dir})
	if w := whoami(t, tr2, s); w.Generation != 0 {
		t.Errorf("second Transport: generation %d", w.Generation)
	}
	wantWire(t, wl, "GET /v1/whoami 200")
	if pin, err := tr2.State.Pin(s.url, exchange.ModP2048); err != nil || pin != s.credentialKID() {
		t.Errorf("pin read back %q (%v), want %s", pin, err, s.credentialKID())
	}

	s.clock.Advance(lifetime - margin + time.Second)
	if w := whoami(t, tr2, s); w.Generation != 1 {
		t.Errorf("rekeyed from the stored session: generation %d", w.Generation)
	}
	wantWire(t, wl, "rekey 200", "GET /v1/whoami 200")

	tr3, wl := newTransport(s, &State{Dir: dir})
	if w := whoami(t, tr3, s); w.Generation != 1 {
		t.Errorf("third Transport: generation %d, want the rekeyed session", w.Generation)
	}
	wantWire(t, wl, "GET /v1/whoami 200")

	// A damaged session file costs an exchange, nothing worse.
	if err := os.WriteFile(sessionPath, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	tr4, wl := newTransport(s, &State{Dir: dir})
	if w := whoami(t, tr4, s); w.Generation != 0 {
		t.Errorf("after a damaged session file: generation %d", w.Generation)
	}
	wantWire(t, wl, "exchange 200", "GET /v1/whoami 200")
}

// TestPinError: a service credential other than the pinned one fails the
// request with *PinError, before anything is sent under the session, and
// the pin stays.
func TestPinError(t *testing.T) {
	otherKID := func(t *testing.T) string {
		x, err := group.GenerateScalar(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return x.Public().KeyID()
	}
	for _, c := range []struct {
		name string
		// run makes the Transport that must meet the changed credential
		// (running whatever comes before) and returns it with the kid
		// it must report as pinned, and its log.
		run  func(t *testing.T, s *service) (*Transport, *wireLog, string)
		wire []string
	}{
		{
			name: "PinnedKID of another credential",
			run: func(t *testing.T, s *service) (*Transport, *wireLog, string) {
				tr, wl := newTransport(s, nil)
				tr.PinnedKID = otherKID(t)
				return tr, wl, tr.PinnedKID
			},
			wire: []string{"exchange 200"},
		},
		{
			name: "credential rotated after the first use",
			run: func(t *testing.T, s *service) (*Transport, *wireLog, string) {
				tr, wl := newTransport(s, nil)
				whoami(t, tr, s)
				wl.take()
				pinned := s.credentialKID()
				s.restart(t, true)
				return tr, wl, pinned
			},
			wire: []string{"GET /v1/whoami 401", "rekey 401", "exchange 200"},
		},
		{
			name: "pin kept in Dir, credential rotated between runs",
			run: func(t *testing.T, s *service) (*Transport, *wireLog, string) {
				dir := t.TempDir()
				tr, _ := newTransport(s, &State{Dir: dir})
				whoami(t, tr, s)
				pinned := s.credentialKID()
				s.restart(t, true)
				tr2, wl := newTransport(s, &State{Dir: dir})
				return tr2, wl, pinned
			},
			wire: []string{"GET /v1/whoami 401", "rekey 401", "exchange 200"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newService(t)
			tr, wl, pinned := c.run(t, s)
			_, _, _, err := get(tr, s)
			var pe *PinError
			if !errors.As(err, &pe) {
				t.Fatalf("got %v, want a *PinError", err)
			}
			if pe.Origin != s.url || pe.Pinned != pinned || pe.Presented != s.credentialKID() {
				t.Errorf("PinError %+v, want origin %s pinned %s presented %s", pe, s.url, pinned, s.credentialKID())
			}
			wantWire(t, wl, c.wire...)
			if tr.PinnedKID == "" {
				if pin, _ := tr.State.Pin(s.url, exchange.ModP2048); pin != pinned {
					t.Errorf("the pin became %q", pin)
				}
			}
			// It stays refused: the changed credential is never trusted,
			// and the dead session is not tried again first.
			if _, _, _, err := get(tr, s); !errors.As(err, &pe) {
				t.Errorf("second request: %v, want a *PinError", err)
			}
			wantWire(t, wl, "exchange 200")
		})
	}
	t.Run("PinnedKID of the service's credential", func(t *testing.T) {
		s := newService(t)
		tr, wl := newTransport(s, nil)
		tr.PinnedKID = s.credentialKID()
		whoami(t, tr, s)
		wantWire(t, wl, "exchange 200", "GET /v1/whoami 200")
	})
}

// TestEncryptedBodies: with Encrypt, the body goes as a JWE and the
// program reads the decrypted answer.
func TestEncryptedBodies(t *testing.T) {
	s := newService(t)
	tr, wl := newTransport(s, nil)
	tr.Encrypt = true
	msg := []byte("a body for the service alone")
	resp, err := (&http.Client{Transport: tr}).Post(s.url+"/v1/echo", "text/plain", bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(got, msg) || resp.Header.Get("Content-Type") == "application/jose" {
		t.Fatalf("echo: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), got)
	}
	wl.mu.Lock()
	defer wl.mu.Unlock()
	if len(wl.events) != 2 || wl.events[1] != "POST /v1/echo 200" {
		t.Fatalf("on the wire %q", wl.events)
	}
	if ct := wl.headers[1].Get("Content-Type"); ct != "application/jose" || bytes.Contains(wl.bodies[1], msg) {
		t.Errorf("the request went as %q, %q", ct, wl.bodies[1])
	}
}

// TestShortSessionLifetime: a SessionLifetime at or below RenewMargin does
// not make every request renew first: the margin is at most half the life.
func TestShortSessionLifetime(t *testing.T) {
	s := newService(t)
	tr, wl := newTransport(s, nil)
	tr.SessionLifetime = 2 * time.Minute // below the default 5 min margin
	for range 3 {
		whoami(t, tr, s)
	}
	wantWire(t, wl, "exchange 200", "GET /v1/whoami 200", "GET /v1/whoami 200", "GET /v1/whoami 200")
}
