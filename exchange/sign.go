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
	// Encrypted says the body is a JWE (Content-Type: application/jose).
	Encrypted bool

	sess   *Session
	claims *jwc.Claims
}

// SignRequest signs a request with method, target (raw path, then
// "?query" when there is one) and body, encrypting the body under EK when
// encrypt is set. The session must be held (Hold) until the response is
// checked.
func (s *Session) SignRequest(method, target string, body []byte, encrypt bool, now time.Time) (*Outgoing, error) {
	o := &Outgoing{Body: body, Encrypted: encrypt, sess: s}
	if encrypt {
		enc, err := jwc.Encrypt(s.EK[:], s.Ticket, body)
		if err != nil {
			return nil, err
		}
		o.Body = []byte(enc)
	}
	o.claims = &jwc.Claims{Method: method, Target: target, IssuedAt: now.Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(o.Body)}
	token, err := s.requestSigner().Sign(o.claims)
	if err != nil {
		return nil, err
	}
	o.Authorization = jwc.Scheme + " " + token
	return o, nil
}

// ErrUnsigned means a response that is not a refusal carried no
// JWC-Signature: it did not come through the service's authentication.
var ErrUnsigned = errors.New("the response is not signed; it did not come through the service's authentication")

// CheckResponse verifies a response's JWC-Signature against the request it
// answers and returns the body the program should see: decrypted when the
// response is a JWE (jose). A response without a signature passes only as
// a refusal (status ≥ 400), unchanged.
func (o *Outgoing) CheckResponse(status int, signature string, body []byte, jose bool) ([]byte, error) {
	if signature == "" {
		if status < 400 {
			return nil, ErrUnsigned
		}
		return body, nil
	}
	rc, err := jwc.VerifyResponse(o.sess.requestSigner().Key(), signature)
	if err != nil {
		return nil, err
	}
	if rc.ID != o.claims.ID || rc.Status != status || rc.BodyHash != jwc.BodyHash(body) {
		return nil, errors.New("the response signature does not match the response (request id, status or body)")
	}
	if !jose {
		return body, nil
	}
	pt, err := jwc.Decrypt(o.sess.EK[:], o.sess.Ticket, string(body))
	if err != nil {
		return nil, err
	}
	return pt, nil
}

// SignRekey returns the Authorization of a rekey request (SPEC §7) with
// this body, signed under RK.
func (s *Session) SignRekey(body []byte, now time.Time) (string, error) {
	token, err := jwc.SignOnce(s.RK[:], s.Ticket, jwc.TypeRekey, &jwc.Claims{
		Method: "POST", Target: WellKnown, IssuedAt: now.Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(body),
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
