package exchange

import (
	"errors"
	"fmt"
	"time"

	"github.com/custos-kx/custos/internal/jwc"
)

// The client's side of SPEC §6 and §7, beside the service's (verify.go):
// signing requests under a session and checking what the service answers.

// Outgoing is a request signed under a session, waiting for its response.
type Outgoing struct {
	// Authorization is the value of the request's Authorization header.
	Authorization string
	// Body is the body to send: the JWE of the caller's body when the
	// request is encrypted.
	Body []byte

	sess   *Session
	claims *jwc.Claims
}

// SignRequest signs a request with method, target (raw path, then
// "?query" when there is one), headers and body (SPEC §6). It covers
// every header in header but Authorization, Host, Content-Length and the
// hop-by-hop ones; a body gets a Content-Type (application/octet-stream
// if it has none), which is covered. With encrypt, the body is sent as a
// JWE under EK carrying its media type, header's Content-Type becomes
// application/jose, and the response is to be encrypted. header is
// changed in place to what must be sent. The session must be held (Hold)
// until the response is checked.
func (s *Session) SignRequest(method, target string, header map[string][]string, body []byte, encrypt bool, now time.Time) (*Outgoing, error) {
	o := &Outgoing{Body: body, sess: s}
	if len(body) > 0 && len(header["Content-Type"]) == 0 {
		header["Content-Type"] = []string{jwc.DefaultMediaType}
	}
	if encrypt && len(body) > 0 {
		enc, err := jwc.Encrypt(s.EK[:], s.Ticket, body, header["Content-Type"][0])
		if err != nil {
			return nil, err
		}
		o.Body = []byte(enc)
		header["Content-Type"] = []string{joseMediaType}
	}
	hds := coveredNames(header, requestUncovered)
	hdh, _ := jwc.HeaderHash(hds, header)
	o.claims = &jwc.Claims{Method: method, Target: target, IssuedAt: now.Unix(), ID: jwc.NewID(),
		BodyHash: jwc.BodyHash(o.Body), Headers: hds, HeaderHash: hdh}
	if encrypt {
		o.claims.Encryption = jwc.A256CBCHS512
	}
	token, err := s.requestSigner().Sign(o.claims)
	if err != nil {
		return nil, err
	}
	o.Authorization = jwc.Scheme + " " + token
	return o, nil
}

const joseMediaType = "application/jose"

// ErrUnsigned means a response that is not a refusal carried no
// JWC-Signature: it did not come through the service's authentication.
var ErrUnsigned = errors.New("the response is not signed; it did not come through the service's authentication")

// Response is a response whose signature CheckResponse verified (or an
// unsigned refusal).
type Response struct {
	// Body is what the program should see: the plaintext of an
	// encrypted body.
	Body []byte
	// Signed says the service's signature covers the response. An
	// unsigned response is only ever a refusal, and nobody's word.
	Signed bool
	// Refusal is the SPEC code of the service's own refusal (JWC-Error),
	// or "" for a handler's answer.
	Refusal Code
}

// CheckResponse verifies a response's JWC-Signature against the request
// it answers (SPEC §6): jti, method, target, status, body, covered headers
// and whether it is encrypted. It removes from header every header the
// signature does not cover (but Content-Length, Date and hop-by-hop ones)
// and, for an encrypted body, sets Content-Type to the plaintext's. A
// response without a signature passes only as a refusal (status ≥ 400),
// unchanged.
func (o *Outgoing) CheckResponse(status int, header map[string][]string, body []byte) (*Response, error) {
	sig := first(header, "Jwc-Signature")
	if sig == "" {
		if status < 400 {
			return nil, ErrUnsigned
		}
		return &Response{Body: body, Refusal: Code(first(header, "Jwc-Error"))}, nil
	}
	rc, err := jwc.VerifyResponse(o.sess.requestSigner().Key(), sig)
	if err != nil {
		return nil, err
	}
	c := o.claims
	if rc.ID != c.ID || rc.Method != c.Method || rc.Target != c.Target || rc.Status != status || rc.BodyHash != jwc.BodyHash(body) {
		return nil, errors.New("the response signature does not match the response (request id, method, target, status or body)")
	}
	hdh, present := jwc.HeaderHash(rc.Headers, header)
	if !present || rc.HeaderHash != hdh {
		return nil, errors.New("the response's headers do not match its signature: a covered header was changed or removed on the way")
	}
	for k := range header {
		if !containsFold(rc.Headers, k) && !uncoveredFold(k, responseUncovered) {
			delete(header, k)
		}
	}
	out := &Response{Body: body, Signed: true, Refusal: Code(first(header, "Jwc-Error"))}
	switch {
	case rc.Encryption != "" && (c.Encryption == "" || out.Refusal != ""):
		return nil, errors.New("the response is encrypted, but the request was not: refused")
	case rc.Encryption == "" && c.Encryption != "" && len(body) > 0 && out.Refusal == "":
		return nil, errors.New("the response to an encrypted request came back in plaintext: refused (someone on the way may have stripped the encryption)")
	case rc.Encryption != "" && len(body) > 0:
		pt, cty, err := jwc.Decrypt(o.sess.EK[:], o.sess.Ticket, string(body))
		if err != nil {
			return nil, err
		}
		out.Body = pt
		header["Content-Type"] = []string{cty}
	}
	return out, nil
}

func first(h map[string][]string, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// RekeyHeader is the one header a rekey request carries besides its
// Authorization, and its signature covers.
var RekeyHeader = map[string][]string{"Content-Type": {"application/json"}}

// SignRekey returns the Authorization of a rekey request (SPEC §7) with
// this body and the headers RekeyHeader, signed under RK.
func (s *Session) SignRekey(body []byte, now time.Time) (string, error) {
	hds := []string{"content-type"}
	hdh, _ := jwc.HeaderHash(hds, RekeyHeader)
	token, err := jwc.SignOnce(s.RK[:], s.Ticket, jwc.TypeRekey, &jwc.Claims{
		Method: "POST", Target: WellKnown, IssuedAt: now.Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(body),
		Headers: hds, HeaderHash: hdh,
	})
	if err != nil {
		return "", fmt.Errorf("exchange: signing the rekey: %w", err)
	}
	return jwc.Scheme + " " + token, nil
}

// requestSigner returns what every request of the session signs with,
// made once: AK prepared for HS512 and the tokens' header part.
func (s *Session) requestSigner() *jwc.Signer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.signer == nil {
		s.signer = jwc.NewSigner(s.AK[:], s.Ticket, jwc.TypeRequest)
	}
	return s.signer
}

// Hold marks the session as in use by one request: its keys are not
// zeroed by Retire until every holder has called Release.
func (s *Session) Hold() {
	s.mu.Lock()
	s.lease.hold()
	s.mu.Unlock()
}

// Release ends one Hold, zeroing the session if it was retired meanwhile.
func (s *Session) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lease.release() {
		s.zeroLocked()
	}
}

// Retire says the session has been replaced: its keys are zeroed once the
// last request holding it is done (at once if none is).
func (s *Session) Retire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lease.retire() {
		s.zeroLocked()
	}
}
