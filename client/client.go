// Package client lets a Go program call a service that Custos fronts.
// Transport is an http.RoundTripper: put it in an http.Client and every
// request is made under a jwcexchange session — exchanged on first use,
// signed, optionally encrypted, its response verified, rekeyed before the
// session ends and exchanged again when the rekey window has closed.
//
//	key, _ := client.LoadKey("alice.key")
//	hc := &http.Client{Transport: &client.Transport{Key: key, State: &client.State{Dir: dir}}}
//	resp, err := hc.Get("https://api.example.com/v1/whoami")
package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/internal/wire"
)

// WellKnown is the path of the jwcexchange endpoint.
const WellKnown = exchange.WellKnown

// Transport authenticates requests with a jwcexchange session.
type Transport struct {
	// Key is the client's credential.
	Key *exchange.ClientKey
	// State keeps pins and sessions; nil keeps them in memory.
	State *State
	// PinnedKID, if set, is the kid the service credential must have.
	// Otherwise the first credential seen for an origin is pinned, one
	// per profile.
	PinnedKID string
	// Encrypt sends request bodies as JWE under the session's EK.
	Encrypt bool
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	// SessionLifetime and RekeyWindow are the service's (default 1 h and
	// 7 days); the client renews RenewMargin before they run out.
	SessionLifetime, RekeyWindow, RenewMargin time.Duration
	Now                                       func() time.Time

	once sync.Once
	mu   sync.Mutex // serialises exchanges and rekeys
	kid  string     // Key's kid, which names its sessions: computed once (a UDF is a SHA-512)
}

func (t *Transport) init() {
	t.once.Do(func() {
		if t.State == nil {
			t.State = &State{}
		}
		if t.Base == nil {
			t.Base = http.DefaultTransport
		}
		if t.SessionLifetime <= 0 {
			t.SessionLifetime = exchange.DefaultSessionLifetime
		}
		if t.RekeyWindow <= 0 {
			t.RekeyWindow = exchange.DefaultRekeyWindow
		}
		if t.RenewMargin <= 0 {
			t.RenewMargin = 5 * time.Minute
		}
		// A margin as long as the session would renew before every
		// request: renew at half the session's life at the latest.
		t.RenewMargin = min(t.RenewMargin, t.SessionLifetime/2)
		if t.Now == nil {
			t.Now = time.Now
		}
		if t.Key != nil {
			t.kid = t.Key.Public().KeyID()
		}
	})
}

// ServiceError is a refusal from the service, with its SPEC code.
type ServiceError struct {
	Status      int
	Code        string
	Description string
	// MayHaveRun says the request was not idempotent and is not known
	// not to have run: the client did not send it again.
	MayHaveRun bool
}

func (e *ServiceError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("the service answered %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("the service refused the request (%d %s): %s", e.Status, e.Code, e.Description)
}

// PinError means the service presented a credential other than the pinned one.
type PinError struct {
	Origin, Pinned, Presented string
}

func (e *PinError) Error() string {
	return fmt.Sprintf("the service credential of %s changed: pinned %s, presented %s. If its operator rotated the credential, remove the pin and exchange again; otherwise someone may be impersonating the service", e.Origin, e.Pinned, e.Presented)
}

func origin(r *http.Request) string { return r.URL.Scheme + "://" + r.URL.Host }

// Exchange runs a new exchange with the service at origin
// (scheme://host[:port]) and keeps the session.
func (t *Transport) Exchange(ctx context.Context, origin string) error {
	t.init()
	t.mu.Lock()
	defer t.mu.Unlock()
	_, err := t.exchange(ctx, origin)
	return err
}

// Rekey renews the session with origin, or exchanges if there is none or
// its rekey window has closed.
func (t *Transport) Rekey(ctx context.Context, origin string) error {
	t.init()
	t.mu.Lock()
	defer t.mu.Unlock()
	sess, err := t.stored(origin)
	if err != nil {
		return err
	}
	_, err = t.renew(ctx, origin, sess)
	return err
}

// stored returns the kept session of this credential with origin, if
// any, after checking that the service credential it was agreed with is
// still the pinned one: a pin set since the session was made holds too.
func (t *Transport) stored(origin string) (*session, error) {
	if t.Key == nil {
		return nil, errors.New("client: no credential key")
	}
	sess, err := t.State.session(origin, t.kid)
	if err != nil || sess == nil {
		return nil, err
	}
	if err := t.checkPin(origin, sess.serverKID); err != nil {
		// The kept session was agreed with a credential the pin refuses:
		// it is of no further use, and keeping it would make every request
		// cost the service a refused request and rekey first.
		t.State.setSession(origin, t.kid, nil)
		return nil, err
	}
	return sess, nil
}

func (t *Transport) exchange(ctx context.Context, origin string) (*session, error) {
	if t.Key == nil {
		return nil, errors.New("client: no credential key")
	}
	pending, msg, err := t.Key.NewExchange(rand.Reader, nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.post(ctx, origin, msg, "")
	if err != nil {
		return nil, err
	}
	s, err := pending.Finish(resp)
	if err != nil {
		return nil, fmt.Errorf("client: the exchange response was refused: %w", err)
	}
	if err := t.checkPin(origin, s.ServerCredential.KeyID()); err != nil {
		s.Zero()
		return nil, err
	}
	now := t.Now()
	sess := newSession(s, now, now)
	return sess, t.State.setSession(origin, t.kid, sess)
}

func (t *Transport) checkPin(origin, kid string) error {
	pinned, p := t.PinnedKID, t.Key.Profile()
	if pinned == "" {
		var err error
		if pinned, err = t.State.Pin(origin, p); err != nil {
			return err
		}
	}
	switch {
	case pinned == "":
		return t.State.setPin(origin, p, kid)
	case pinned != kid:
		return &PinError{Origin: origin, Pinned: pinned, Presented: kid}
	}
	return nil
}

// renew rekeys sess, or exchanges when that is not possible.
func (t *Transport) renew(ctx context.Context, origin string, sess *session) (*session, error) {
	if sess == nil || t.Now().After(sess.Exchanged.Add(t.RekeyWindow-t.RenewMargin)) {
		return t.exchange(ctx, origin)
	}
	pending, msg, err := sess.NewRekey(rand.Reader, nil)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(msg)
	token, err := sess.SignRekey(body, t.Now())
	if err != nil {
		return nil, err
	}
	resp, err := t.post(ctx, origin, msg, token)
	var se *ServiceError
	if errors.As(err, &se) && (se.Code == string(exchange.TicketExpired) || se.Code == string(exchange.BadAuthentication)) {
		// The rekey window closed, or the service no longer knows the
		// ticket: the session is dead, whatever the exchange gives.
		t.State.setSession(origin, t.kid, nil)
		return t.exchange(ctx, origin)
	}
	if err != nil {
		return nil, err
	}
	s, err := pending.Finish(resp)
	if err != nil {
		return nil, fmt.Errorf("client: the rekey response was refused: %w", err)
	}
	next := newSession(s, t.Now(), sess.Exchanged)
	return next, t.State.setSession(origin, t.kid, next)
}

// post sends an ExchangeRequest to the jwcexchange endpoint.
func (t *Transport) post(ctx context.Context, origin string, msg *wire.ExchangeRequest, auth string) (*wire.ExchangeResponse, error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return SendExchange(ctx, t.Base, origin, body, auth)
}

// SendExchange posts an encoded ExchangeRequest to the jwcexchange endpoint
// of origin through rt and decodes the answer; a refusal is a
// *ServiceError. auth, if set, is the Authorization of a rekey.
func SendExchange(ctx context.Context, rt http.RoundTripper, origin string, body []byte, auth string) (*wire.ExchangeResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, origin+WellKnown, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for k, vs := range exchange.RekeyHeader { // Content-Type: application/json, which a rekey signs
		req.Header[k] = vs
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("client: the service at %s did not answer: %w", origin, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	var out wire.ExchangeResponse
	if uerr := wire.Unmarshal(b, &out); uerr != nil || resp.StatusCode != http.StatusOK {
		return nil, serviceError(resp.StatusCode, &out, uerr)
	}
	return &out, nil
}

func serviceError(status int, m *wire.ExchangeResponse, decodeErr error) error {
	if decodeErr != nil || m.Error == "" {
		return &ServiceError{Status: status, Description: http.StatusText(status)}
	}
	return &ServiceError{Status: status, Code: m.Error, Description: m.StatusDescription}
}

// acquire returns a session for origin, held for one request: the kept
// one, renewed if it is about to end or is the session the service just
// refused (unless another request has already replaced it), or else a new
// exchange.
func (t *Transport) acquire(ctx context.Context, origin string, refused *session) (*session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	sess, err := t.stored(origin)
	if err != nil {
		return nil, err
	}
	switch {
	case sess == nil:
		sess, err = t.exchange(ctx, origin)
	case sess == refused || t.Now().After(sess.Renewed.Add(t.SessionLifetime-t.RenewMargin)):
		sess, err = t.renew(ctx, origin, sess)
	}
	if err != nil {
		return nil, err
	}
	sess.Hold()
	return sess, nil
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.init()
	var body []byte
	if req.Body != nil {
		var err error
		body, err = io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
	}
	o := origin(req)
	sess, err := t.acquire(req.Context(), o, nil)
	if err != nil {
		return nil, err
	}
	resp, refusal, err := t.send(req, body, sess)
	sess.Release()
	if err != nil || (refusal != exchange.TicketExpired && refusal != exchange.BadAuthentication) {
		return resp, err
	}
	// The service no longer accepts the session. No refusal proves that
	// the request did not run (an attacker can hold the request back, let
	// it through later and answer with a refusal got by replaying it), so
	// only an idempotent request is sent again, once, on a renewed
	// session: renew rekeys, and exchanges when the ticket is unknown.
	if !idempotent(req.Method) {
		resp.Body.Close()
		return nil, &ServiceError{Status: resp.StatusCode, Code: string(refusal), MayHaveRun: true,
			Description: "the session was refused; the request was not sent again, since it may have reached the service before the refusal: retry it yourself if that is safe"}
	}
	resp.Body.Close()
	if sess, err = t.acquire(req.Context(), o, sess); err != nil {
		return nil, err
	}
	defer sess.Release()
	resp, _, err = t.send(req, body, sess)
	return resp, err
}

// idempotent reports whether a request with this method may be sent twice
// (SPEC §6; RFC 9110 §9.2.2).
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// AuthError returns the SPEC error code of a refused authenticated
// request: its JWC-Error header, which the service sets on its own
// refusals (signed once the request's MAC verified).
func AuthError(resp *http.Response) string {
	return resp.Header.Get("JWC-Error")
}

// send signs (and encrypts) one request and verifies (and decrypts) its
// response; refusal is the service's own refusal code, if it refused.
func (t *Transport) send(orig *http.Request, body []byte, sess *session) (_ *http.Response, refusal exchange.Code, _ error) {
	req := orig.Clone(orig.Context())
	out, err := sess.SignRequest(req.Method, req.URL.RequestURI(), req.Header, body, t.Encrypt, t.Now())
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Authorization", out.Authorization)
	// http.NoBody, not an empty reader: net/http would otherwise probe the
	// body for its length on every request (a goroutine and a timer each).
	req.Body, req.ContentLength = http.NoBody, 0
	if len(out.Body) > 0 {
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(out.Body)), int64(len(out.Body))
	}
	resp, err := t.Base.RoundTrip(req)
	if err != nil {
		return nil, "", fmt.Errorf("client: the service did not answer: %w", err)
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, "", err
	}
	checked, err := out.CheckResponse(resp.StatusCode, resp.Header, respBody)
	if err != nil {
		return nil, "", fmt.Errorf("client: %w", err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(checked.Body))
	resp.ContentLength = int64(len(checked.Body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(checked.Body)))
	return resp, checked.Refusal, nil
}
