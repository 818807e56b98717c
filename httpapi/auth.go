package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/custos-kx/custos/exchange"
)

type ctxKey struct{}

// Session is what a handler behind the middleware learns of the caller.
type Session = exchange.SessionInfo

// SessionFrom returns the session of an authenticated request.
func SessionFrom(r *http.Request) Session { return sessionFrom(r.Context()) }

func sessionFrom(ctx context.Context) Session {
	v, _ := ctx.Value(ctxKey{}).(*exchange.Verified)
	if v == nil {
		return Session{}
	}
	return v.Session()
}

// signedRequest is what the engine verifies of an HTTP request.
func (s *Service) signedRequest(r *http.Request, body []byte) *exchange.SignedRequest {
	return &exchange.SignedRequest{
		Method: r.Method, Target: r.URL.RequestURI(), Authorization: r.Header.Get("Authorization"), Header: r.Header, Body: body,
		Remote: r.RemoteAddr, Opens: (*openBudget)(s),
	}
}

// openBudget is the Service as the engine's OpenBudget: tickets that fail
// to open count against the client's address, so a stranger sending
// forged tickets gets 429 before costing the token much.
type openBudget Service

// The client's address is found only here, for the tickets not in memory:
// the requests on an open session, nearly all of them, need none.
func (b *openBudget) BeforeOpen(ctx context.Context, r *exchange.SignedRequest) error {
	s := (*Service)(b)
	ok, retry, err := s.failedOpens.Peek(ctx, s.clientAddr(r.Remote, r.Header))
	if err != nil {
		return s.refusal("rate limit", exchange.SharedStoreError(err))
	}
	if !ok {
		e := exchange.Errorf(exchange.RateLimited, "Too many session tickets from your address did not open; retry after %ss, or run a new exchange.", retryAfter(retry))
		e.RetryAfter = retry
		return e
	}
	return nil
}

func (b *openBudget) OpenFailed(ctx context.Context, r *exchange.SignedRequest) {
	s := (*Service)(b)
	if _, _, err := s.failedOpens.Allow(ctx, s.clientAddr(r.Remote, r.Header)); err != nil {
		s.refusal("rate limit", exchange.SharedStoreError(err))
	}
}

// authenticated wraps a handler (SPEC §6): it verifies the request; sends
// a refusal unsigned if the MAC did not verify and signed if it did;
// decrypts the body when the signed enc claim says it is encrypted; passes
// on only the covered headers; and signs (and, for an encrypted request,
// encrypts) the handler's response, from which it removes any JWC-*
// header and JWC challenge.
func (s *Service) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := s.cfg.Now()
		// A refusal gets a request id of its own, in its log line and its
		// answer; a client's own id counts only once its signature holds.
		refuse := func(v *exchange.Verified, e *exchange.Error) {
			id := newRequestID()
			w.Header().Set(requestIDHeader, id)
			s.refuse(w, v, e)
			s.logRequest(r, v, e.Code.Status(), string(e.Code), id, start)
		}
		body, e := s.readBody(w, r) // any media type: only the signed enc claim decides
		if e != nil {
			refuse(nil, e)
			return
		}
		v, err := s.cfg.Engine.Verify(r.Context(), s.signedRequest(r, body))
		if v == nil {
			refuse(nil, s.refusal("authenticate", err))
			return
		}
		defer v.Done()
		if err != nil {
			refuse(v, s.refusal("authenticate", err))
			return
		}
		mediaType := r.Header.Get("Content-Type")
		if v.Encrypted() && len(body) > 0 {
			pt, cty, err := v.Decrypt(body)
			if err != nil {
				refuse(v, s.refusal("decrypt", err))
				return
			}
			body, mediaType = pt, cty
		}
		authRequestsOK.Inc()
		r.Header = passedOn(r.Header, v.Covered())
		if mediaType != "" && len(body) > 0 {
			r.Header.Set("Content-Type", mediaType)
		}
		// A request id the client signed is kept; otherwise one is made.
		// The handler or upstream sees it, and the answer carries it.
		id := r.Header.Get(requestIDHeader)
		if id == "" {
			id = newRequestID()
			r.Header.Set(requestIDHeader, id)
		}
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, v))
		r.Body, r.ContentLength = http.NoBody, 0
		if len(body) > 0 {
			r.Body, r.ContentLength = readCloser{bytes.NewReader(body)}, int64(len(body))
		}
		rec := newRecorder()
		next.ServeHTTP(rec, r)
		scrub(rec.header)
		rec.header.Set(requestIDHeader, id)
		s.respond(w, v, v.Encrypted(), rec)
		s.logRequest(r, v, rec.status, "ok", id, start)
	})
}

const requestIDHeader = "X-Request-Id"

func newRequestID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// logRequest writes the one line of an authenticated request: refusals
// always (at Info, or Warn for the service's own faults), answered
// requests at the configured level and sampling.
func (s *Service) logRequest(r *http.Request, v *exchange.Verified, status int, result, id string, start time.Time) {
	level := s.cfg.RequestLog
	switch {
	case status >= 500:
		level = slog.LevelWarn
	case result != "ok":
		level = max(level, slog.LevelInfo)
	case s.cfg.RequestLogOff:
		return
	case s.cfg.RequestLogSample > 1 && s.requests.Add(1)%uint64(s.cfg.RequestLogSample) != 0:
		return
	}
	if !s.log.Enabled(r.Context(), level) {
		return
	}
	var account, kid string
	if v != nil {
		info := v.Session()
		account, kid = info.Account, info.CredentialKID
	}
	s.log.LogAttrs(r.Context(), level, "request", slog.String("account", account), slog.String("kid", kid),
		slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", status),
		slog.String("result", result), slog.Float64("duration_ms", ms(s.cfg.Now().Sub(start))),
		slog.String("client", s.clientAddress(r)), slog.String("request_id", id))
}

// refuse sends the service's own refusal of an authenticated request:
// signed when v (the MAC verified), unsigned otherwise; never encrypted.
func (s *Service) refuse(w http.ResponseWriter, v *exchange.Verified, e *exchange.Error) {
	authRequests.WithLabelValues(string(e.Code)).Inc()
	if v == nil {
		writeError(w, e, 0)
		return
	}
	rec := newRecorder()
	writeError(rec, e, 0)
	s.respond(w, v, false, rec)
}

// passedOn keeps of the request's headers those the signature covers,
// except the ones nobody outside may set (SPEC §6). Authorization is never
// among them: an upstream holding the token could replay it to another
// replica within the skew window.
func passedOn(h http.Header, covered []string) http.Header {
	out := make(http.Header, len(covered)+2)
	for _, name := range covered {
		k := http.CanonicalHeaderKey(name)
		if vs, ok := h[k]; ok && k != "Authorization" {
			out[k] = vs
		}
	}
	dropUntrusted(out)
	return out
}

// scrub removes from a handler's or upstream's response what only the
// service may say: JWC-* headers and WWW-Authenticate challenges of the
// JWC scheme.
func scrub(h http.Header) {
	for k := range h {
		if hasPrefixFold(k, "jwc-") {
			delete(h, k)
		}
	}
	if vs := h["Www-Authenticate"]; len(vs) > 0 {
		kept := vs[:0:0]
		for _, v := range vs {
			if !hasPrefixFold(strings.TrimSpace(v), exchange.Scheme) {
				kept = append(kept, v)
			}
		}
		if len(kept) == 0 {
			delete(h, "Www-Authenticate")
		} else {
			h["Www-Authenticate"] = kept
		}
	}
}

// respond sends a recorded response with its JWC-Signature; with encrypt,
// a body is sent as a JWE carrying its media type.
func (s *Service) respond(w http.ResponseWriter, v *exchange.Verified, encrypt bool, rec *recorder) {
	body := rec.body.Bytes()
	if len(body) > 0 && rec.header.Get("Content-Type") == "" {
		// What net/http would add, set here so that the signature covers it.
		rec.header.Set("Content-Type", http.DetectContentType(body))
	}
	encrypted := false
	if encrypt && len(body) > 0 {
		enc, err := v.Encrypt(body, rec.header.Get("Content-Type"))
		if err != nil {
			writeError(w, s.refusal("encrypt the response", err), 0)
			return
		}
		body, encrypted = enc, true
		rec.header.Set("Content-Type", "application/jose")
	}
	rec.header.Del("Content-Length")
	sig, err := v.SignResponse(rec.status, rec.header, body, encrypted)
	if err != nil {
		writeError(w, s.refusal("sign the response", err), 0)
		return
	}
	h := w.Header()
	for k, vs := range rec.header {
		h[k] = vs
	}
	h.Set("JWC-Signature", sig)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.status)
	w.Write(body)
}

// recorder holds a handler's response until it is signed.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
	wrote  bool
}

func newRecorder() *recorder {
	rec := &recorder{header: make(http.Header, 4), status: http.StatusOK}
	rec.body.Grow(512) // most answers fit: one allocation instead of several
	return rec
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(status int) {
	// 1xx responses (103 Early Hints, 100 Continue) are not final: the
	// signature is over the final status (SPEC §6).
	if !r.wrote && status >= 200 {
		r.status, r.wrote = status, true
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	if r.body.Len()+len(b) > maxResponse {
		return 0, errors.New("response too large to sign")
	}
	return r.body.Write(b)
}

// maxResponse bounds a response the middleware buffers to sign.
const maxResponse = 16 << 20

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func (s *Service) handleWhoami(w http.ResponseWriter, r *http.Request) {
	sess := SessionFrom(r)
	writeJSON(w, http.StatusOK, struct {
		Account       string `json:"account"`
		CredentialKID string `json:"credential_kid"`
		Expires       string `json:"expires"`
		Generation    uint32 `json:"generation"`
	}{sess.Account, sess.CredentialKID, sess.Expires.UTC().Format(time.RFC3339), sess.Generation})
}

func (s *Service) handleEcho(w http.ResponseWriter, r *http.Request) {
	body, _ := readAll(r.Body)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(body)
}

func (s *Service) handleProxy(w http.ResponseWriter, r *http.Request) {
	s.proxy.ServeHTTP(w, r)
}
