package httpapi

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
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
func signedRequest(r *http.Request, body []byte) *exchange.SignedRequest {
	return &exchange.SignedRequest{Method: r.Method, Target: r.URL.RequestURI(), Authorization: r.Header.Get("Authorization"), Body: body}
}

// authenticated wraps a handler: it authenticates the request, decrypts an
// encrypted body, and signs (and, for an encrypted request, encrypts) the
// response.
func (s *Service) authenticated(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, e := s.readBody(w, r) // any media type: only application/jose means something here
		var v *exchange.Verified
		encrypted := false
		if e == nil {
			var err error
			if v, err = s.cfg.Engine.Verify(r.Context(), signedRequest(r, body)); err != nil {
				e = s.refusal("authenticate", err)
			} else {
				defer v.Done()
			}
		}
		if e == nil && isJOSE(r) {
			pt, err := v.Decrypt(body)
			if err != nil {
				e = s.refusal("decrypt", err)
			} else {
				body, encrypted = pt, true
				r.Header.Set("Content-Type", "application/json")
			}
		}
		if e != nil {
			authRequests.WithLabelValues(string(e.Code)).Inc()
			writeError(w, e, 0)
			return
		}
		authRequestsOK.Inc()
		// The token is for the service: an upstream holding it could
		// replay it to another replica within the skew window.
		r.Header.Del("Authorization")
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, v))
		r.Body, r.ContentLength = http.NoBody, 0
		if len(body) > 0 {
			r.Body, r.ContentLength = readCloser{bytes.NewReader(body)}, int64(len(body))
		}
		rec := &recorder{header: make(http.Header, 4), status: http.StatusOK}
		rec.body.Grow(512) // most answers fit: one allocation instead of several
		next.ServeHTTP(rec, r)
		s.respond(w, v, encrypted, rec)
	})
}

func isJOSE(r *http.Request) bool {
	return r.Header.Get("Content-Type") == "application/jose"
}

// respond sends a recorded response, encrypted if the request was, with its
// JWC-Signature.
func (s *Service) respond(w http.ResponseWriter, v *exchange.Verified, encrypted bool, rec *recorder) {
	body := rec.body.Bytes()
	if encrypted {
		enc, err := v.Encrypt(body)
		if err != nil {
			writeError(w, s.refusal("encrypt the response", err), 0)
			return
		}
		body = enc
		rec.header.Set("Content-Type", "application/jose")
	}
	sig, err := v.SignResponse(rec.status, body)
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
