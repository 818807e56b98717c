package exchange

import (
	"bytes"
	"crypto/rand"
	"testing"
	"time"

	"github.com/custos-kx/custos/internal/jwc"
)

// TestCheckResponseEncryption: the client refuses a plaintext answer to an
// encrypted request and an encrypted one to a plaintext request, even when
// the signature over it is genuine (SPEC §6) — the answer an attacker got
// from the v1 service by stripping the request's media type.
func TestCheckResponseEncryption(t *testing.T) {
	s := &Session{Ticket: bytes.Repeat([]byte{1}, 100)}
	rand.Read(s.AK[:])
	rand.Read(s.EK[:])
	now := time.Unix(1_750_000_000, 0)
	answer := func(o *Outgoing, body []byte, header map[string][]string, enc bool) (*Response, error) {
		hds := coveredNames(header, responseUncovered)
		hdh, _ := jwc.HeaderHash(hds, header)
		rc := &jwc.ResponseClaims{ID: o.claims.ID, Method: o.claims.Method, Target: o.claims.Target, Status: 200,
			BodyHash: jwc.BodyHash(body), Headers: hds, HeaderHash: hdh}
		if enc {
			rc.Encryption = jwc.A256CBCHS512
		}
		sig, err := jwc.SignResponse(s.requestSigner().Key(), rc)
		if err != nil {
			t.Fatal(err)
		}
		header["Jwc-Signature"] = []string{sig}
		return o.CheckResponse(200, header, body)
	}
	encrypted, _ := s.SignRequest("GET", "/v1/whoami", map[string][]string{}, nil, true, now)
	if _, err := answer(encrypted, []byte(`{"account":"alice"}`), map[string][]string{"Content-Type": {"application/json"}}, false); err == nil {
		t.Error("a plaintext answer to an encrypted request was accepted")
	}
	jwe, _ := jwc.Encrypt(s.EK[:], s.Ticket, []byte("hi"), "text/plain")
	plain, _ := s.SignRequest("GET", "/v1/whoami", map[string][]string{}, nil, false, now)
	if _, err := answer(plain, []byte(jwe), map[string][]string{"Content-Type": {"application/jose"}}, true); err == nil {
		t.Error("an encrypted answer to a plaintext request was accepted")
	}
	encrypted, _ = s.SignRequest("GET", "/v1/whoami", map[string][]string{}, nil, true, now)
	got, err := answer(encrypted, []byte(jwe), map[string][]string{"Content-Type": {"application/jose"}}, true)
	if err != nil || string(got.Body) != "hi" {
		t.Fatalf("the encrypted answer to an encrypted request: %+v %v", got, err)
	}
	// The service's own refusal of an encrypted request is plaintext, and
	// says so with its signed JWC-Error.
	encrypted, _ = s.SignRequest("GET", "/v1/whoami", map[string][]string{}, nil, true, now)
	got, err = answer(encrypted, []byte(`{"ExchangeResponse":{}}`), map[string][]string{"Content-Type": {"application/json"}, "Jwc-Error": {"TicketExpired"}}, false)
	if err != nil || got.Refusal != TicketExpired {
		t.Fatalf("a signed refusal of an encrypted request: %+v %v", got, err)
	}
}
