package tests

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/custos-kx/custos/exchange"
	"github.com/custos-kx/custos/httpapi"
	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/jwc"
	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/udf"
	"github.com/custos-kx/custos/internal/wire"
	"github.com/custos-kx/custos/keystore"
)

// The hostile-input catalogue: bad requests against every endpoint, each
// with the exact status and SPEC code it must get, a body that gives away
// nothing, and a valid exchange answered right after it.

// hostileCase builds one bad request. f holds a fresh session and keys.
type hostileCase struct {
	name   string
	status int
	code   exchange.Code
	build  func(t *testing.T, f *fixture) *http.Request
}

type fixture struct {
	e        *env
	key      *exchange.ClientKey // registered and enabled
	sess     *exchange.Session   // a fresh session of key
	stranger *exchange.ClientKey // not registered
	banned   *exchange.ClientKey // registered to a disabled account
}

// wireKey is a PublicKeyDH object with the given Public bytes and a kid
// computed from them, so only the value itself is wrong.
func wireKey(public []byte) *wire.PublicKey {
	d := group.Domain()
	return &wire.PublicKey{KID: udf.KeyID(d, public), Domain: d[:], Public: public}
}

func goodKey(t *testing.T) *wire.PublicKey {
	s, _ := group.GenerateScalar(rand.Reader)
	return exchange.EncodeKey(exchange.DHKey(s.Public()))
}

func nonResidue() *big.Int {
	for v := int64(2); ; v++ {
		if big.Jacobi(big.NewInt(v), group.P()) == -1 {
			return big.NewInt(v)
		}
	}
}

func exchangeBody(cred, nonce *wire.PublicKey) []byte {
	b, _ := json.Marshal(&wire.ExchangeRequest{ClientCredential: cred, ClientNonce: nonce})
	return b
}

func (f *fixture) credKey() *wire.PublicKey { return exchange.EncodeKey(f.key.Public()) }

func (f *fixture) post(body []byte, contentType string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, f.e.url+httpapi.WellKnown, bytes.NewReader(body))
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

func (f *fixture) postJSON(body []byte) *http.Request { return f.post(body, "application/json") }

// withNonce is an exchange from the registered credential with nonce as ClientNonce.
func (f *fixture) withNonce(public []byte) *http.Request {
	return f.postJSON(exchangeBody(f.credKey(), wireKey(public)))
}

// authed builds an authenticated request; mutate adjusts the parts first.
func (f *fixture) authed(method, path string, body []byte, mutate func(r *request)) *http.Request {
	r := request{method: method, path: path, body: body}
	r.claims = &jwc.Claims{Method: method, Target: path, IssuedAt: f.e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(body)}
	r.key, r.ticket, r.typ = f.sess.AK[:], f.sess.Ticket, jwc.TypeRequest
	if mutate != nil {
		mutate(&r)
	}
	req, _ := http.NewRequest(method, f.e.url+path, bytes.NewReader(r.body))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	covered(r.claims, req.Header)
	if r.token == "" {
		r.token, _ = jwc.SignOnce(r.key, r.ticket, r.typ, r.claims)
	}
	req.Header.Set("Authorization", "JWC "+r.token)
	return req
}

// rekey builds a rekey request with a fresh nonce, signed as mutate says.
func (f *fixture) rekey(mutate func(r *request, msg *wire.ExchangeRequest)) *http.Request {
	_, msg, _ := f.sess.NewRekey(rand.Reader, nil)
	r := request{key: f.sess.RK[:], ticket: f.sess.Ticket, typ: jwc.TypeRekey}
	if mutate != nil {
		mutate(&r, msg)
	}
	body, _ := json.Marshal(msg)
	if r.body != nil {
		body = r.body
	}
	if r.claims == nil {
		r.claims = &jwc.Claims{Method: http.MethodPost, Target: httpapi.WellKnown, IssuedAt: f.e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(body)}
	}
	req := f.postJSON(body)
	covered(r.claims, req.Header)
	if r.token == "" {
		r.token, _ = jwc.SignOnce(r.key, r.ticket, r.typ, r.claims)
	}
	req.Header.Set("Authorization", "JWC "+r.token)
	return req
}

func forgeJWS(header string, payload any, key []byte) string {
	p, _ := json.Marshal(payload)
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString(p)
	sig := jwcHMAC(key, signing)
	return signing + "." + enc.EncodeToString(sig)
}

func hostileCases() []hostileCase {
	p := group.P()
	one := big.NewInt(1)
	tooLong := bytes.Repeat([]byte{0x01}, 258)
	deep := strings.Repeat(`{"a":`, 5000) + `1` + strings.Repeat(`}`, 5000)
	B := http.StatusBadRequest
	var cases []hostileCase
	add := func(name string, status int, code exchange.Code, build func(t *testing.T, f *fixture) *http.Request) {
		cases = append(cases, hostileCase{name, status, code, build})
	}

	// The exchange endpoint: bodies and media types.
	add("empty body", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request { return f.postJSON(nil) })
	add("truncated body", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		b := exchangeBody(f.credKey(), goodKey(t))
		return f.postJSON(b[:len(b)/2])
	})
	add("not JSON", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request { return f.postJSON([]byte("hello, service")) })
	add("JSON array", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request { return f.postJSON([]byte(`[]`)) })
	add("JSON null", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request { return f.postJSON([]byte(`null`)) })
	add("two JSON values", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		b := exchangeBody(f.credKey(), goodKey(t))
		return f.postJSON(append(b, b...))
	})
	add("no Content-Type", http.StatusUnsupportedMediaType, exchange.UnsupportedMediaType, func(t *testing.T, f *fixture) *http.Request {
		return f.post(exchangeBody(f.credKey(), goodKey(t)), "")
	})
	add("Content-Type text/plain", http.StatusUnsupportedMediaType, exchange.UnsupportedMediaType, func(t *testing.T, f *fixture) *http.Request {
		return f.post(exchangeBody(f.credKey(), goodKey(t)), "text/plain")
	})
	add("Content-Type application/jose", http.StatusUnsupportedMediaType, exchange.UnsupportedMediaType, func(t *testing.T, f *fixture) *http.Request {
		return f.post(exchangeBody(f.credKey(), goodKey(t)), "application/jose")
	})
	add("oversized body", http.StatusRequestEntityTooLarge, exchange.TooLarge, func(t *testing.T, f *fixture) *http.Request {
		return f.postJSON(append([]byte(`{"ExchangeRequest":{"Pad":"`), bytes.Repeat([]byte("a"), 70<<10)...))
	})
	add("oversized headers", http.StatusRequestEntityTooLarge, exchange.TooLarge, func(t *testing.T, f *fixture) *http.Request {
		r := f.postJSON(exchangeBody(f.credKey(), goodKey(t)))
		r.Header.Set("X-Padding", strings.Repeat("a", 20<<10))
		return r
	})
	add("JSON nested 5000 deep", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request { return f.postJSON([]byte(deep)) })
	add("duplicate member", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		n, _ := json.Marshal(goodKey(t))
		b := exchangeBody(f.credKey(), goodKey(t))
		b = bytes.Replace(b, []byte(`"ClientNonce":`), append(append([]byte(`"ClientNonce":`), n...), []byte(`,"ClientNonce":`)...), 1)
		return f.postJSON(b)
	})
	// SPEC v1.1 §2: names are exact. A member in another case is another,
	// unknown member, ignored; the same name spelt with an escape is a
	// duplicate.
	add("duplicate member spelt with an escape", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		n, _ := json.Marshal(goodKey(t))
		b := exchangeBody(f.credKey(), goodKey(t))
		b = bytes.Replace(b, []byte(`"ClientNonce":`), append(append([]byte(`"Client\u004eonce":`), n...), []byte(`,"ClientNonce":`)...), 1)
		return f.postJSON(b)
	})
	add("ClientCredential in another case is not a ClientCredential: an unsigned rekey", http.StatusUnauthorized, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		b := exchangeBody(f.credKey(), goodKey(t))
		b = bytes.Replace(b, []byte(`"ClientCredential":`), []byte(`"clientcredential":`), 1)
		return f.postJSON(b)
	})
	add("wrong tag", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		b := exchangeBody(f.credKey(), goodKey(t))
		return f.postJSON(bytes.Replace(b, []byte(`"ExchangeRequest"`), []byte(`"ExchangeResponse"`), 1))
	})
	add("untagged request", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		b, _ := json.Marshal(map[string]any{"ClientCredential": f.credKey(), "ClientNonce": goodKey(t)})
		return f.postJSON(b)
	})
	add("untagged key", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		k := f.credKey()
		return f.postJSON([]byte(fmt.Sprintf(`{"ExchangeRequest":{"ClientCredential":{"kid":%q,"Domain":%q,"Public":%q}}}`,
			k.KID, base64.RawURLEncoding.EncodeToString(k.Domain), base64.RawURLEncoding.EncodeToString(k.Public))))
	})
	add("no ClientNonce", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request { return f.postJSON(exchangeBody(f.credKey(), nil)) })
	add("no ClientCredential: an unsigned rekey (SPEC §7)", http.StatusUnauthorized, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request { return f.postJSON(exchangeBody(nil, goodKey(t))) })
	add("Public not base64url", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		b, _ := json.Marshal(f.credKey())
		k := strings.Replace(string(b), `"Public":"`, `"Public":"!!`, 1)
		n, _ := json.Marshal(goodKey(t))
		return f.postJSON([]byte(`{"ExchangeRequest":{"ClientCredential":` + k + `,"ClientNonce":` + string(n) + `}}`))
	})
	add("Public with base64 padding", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		n := goodKey(t)
		pub := b64(n.Public)
		nb := bytes.Replace(mustJSON(n), []byte(`"`+pub+`"`), []byte(`"`+pub+`=="`), 1)
		return f.postJSON([]byte(`{"ExchangeRequest":{"ClientCredential":` + string(mustJSON(f.credKey())) + `,"ClientNonce":` + string(nb) + `}}`))
	})
	// SPEC v1.1 §2: one encoding per value, refused before any key check.
	add("Domain with non-zero trailing bits", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		return f.postJSON(bytes.Replace(exchangeBody(f.credKey(), goodKey(t)), []byte(`PEwA"`), []byte(`PEwB"`), 1))
	})
	add("Domain in the standard base64 alphabet", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		return f.postJSON(bytes.Replace(exchangeBody(f.credKey(), goodKey(t)), []byte(`P_PEwA"`), []byte(`P/PEwA"`), 1))
	})
	add("kid is a number", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		b := exchangeBody(f.credKey(), goodKey(t))
		k := f.credKey().KID
		return f.postJSON(bytes.Replace(b, []byte(`"`+k+`"`), []byte(`12345`), 1))
	})

	// Every invalid public value of SPEC §1, as the nonce.
	U := http.StatusUnprocessableEntity
	for name, v := range map[string][]byte{
		"Public 0":                       group.ToWire(big.NewInt(0)),
		"Public 1":                       group.ToWire(one),
		"Public p−1":                     group.ToWire(new(big.Int).Sub(p, one)),
		"Public p":                       group.ToWire(p),
		"Public p+1":                     group.ToWire(new(big.Int).Add(p, one)),
		"Public 2^2048":                  group.ToWire(new(big.Int).Lsh(one, 2048)),
		"Public a quadratic non-residue": group.ToWire(nonResidue()),
		"Public negative":                {0xff},
		"Public negative, long":          append(bytes.Repeat([]byte{0x01}, 200), 0x80),
		"Public 258 bytes":               tooLong,
		"Public empty":                   {},
	} {
		add(name, U, exchange.InvalidPublicKey, func(t *testing.T, f *fixture) *http.Request { return f.withNonce(v) })
	}
	add("Public not minimal", U, exchange.InvalidPublicKey, func(t *testing.T, f *fixture) *http.Request {
		return f.withNonce(append(goodKey(t).Public, 0, 0))
	})
	add("credential Public p−1", U, exchange.InvalidPublicKey, func(t *testing.T, f *fixture) *http.Request {
		return f.postJSON(exchangeBody(wireKey(group.ToWire(new(big.Int).Sub(p, one))), goodKey(t)))
	})
	add("wrong Domain", U, exchange.UnsupportedDomain, func(t *testing.T, f *fixture) *http.Request {
		k := goodKey(t)
		k.Domain = bytes.Repeat([]byte{0x42}, len(k.Domain))
		return f.postJSON(exchangeBody(f.credKey(), k))
	})
	add("empty Domain", U, exchange.UnsupportedDomain, func(t *testing.T, f *fixture) *http.Request {
		k := goodKey(t)
		k.Domain = nil
		return f.postJSON(exchangeBody(f.credKey(), k))
	})
	add("kid of another key", U, exchange.KidMismatch, func(t *testing.T, f *fixture) *http.Request {
		k := goodKey(t)
		k.KID = f.credKey().KID
		return f.postJSON(exchangeBody(f.credKey(), k))
	})
	add("kid garbage", U, exchange.KidMismatch, func(t *testing.T, f *fixture) *http.Request {
		k := goodKey(t)
		k.KID = "not a kid <script>"
		return f.postJSON(exchangeBody(f.credKey(), k))
	})
	add("C = N", U, exchange.InvalidPublicKey, func(t *testing.T, f *fixture) *http.Request {
		return f.postJSON(exchangeBody(f.credKey(), f.credKey()))
	})
	add("unknown credential", http.StatusForbidden, exchange.UnknownCredential, func(t *testing.T, f *fixture) *http.Request {
		return f.postJSON(exchangeBody(exchange.EncodeKey(f.stranger.Public()), goodKey(t)))
	})
	add("disabled account", http.StatusForbidden, exchange.AccountDisabled, func(t *testing.T, f *fixture) *http.Request {
		return f.postJSON(exchangeBody(exchange.EncodeKey(f.banned.Public()), goodKey(t)))
	})
	offer := func(o string) func(t *testing.T, f *fixture) *http.Request {
		return func(t *testing.T, f *fixture) *http.Request {
			b := exchangeBody(f.credKey(), goodKey(t))
			return f.postJSON(append(b[:len(b)-2], []byte(`,"Offer":`+o+`}}`)...))
		}
	}
	add("empty Offer", B, exchange.NoCommonAlgorithm, offer(`[]`))
	add("Offer of unknown algorithms", B, exchange.NoCommonAlgorithm, offer(`[{"Encryption":["A128GCM"],"Authentication":["HS256"]}]`))
	add("Offer of none", B, exchange.NoCommonAlgorithm, offer(`[{"Encryption":["none"],"Authentication":["none"]}]`))
	add("Offer a string", B, exchange.Malformed, offer(`"A256CBC-HS512"`))
	add("Offer of numbers", B, exchange.Malformed, offer(`[{"Encryption":[1],"Authentication":[2]}]`))
	add("PUT on the endpoint", http.StatusMethodNotAllowed, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		r, _ := http.NewRequest(http.MethodPut, f.e.url+httpapi.WellKnown, strings.NewReader("{}"))
		return r
	})
	add("DELETE on discovery", http.StatusMethodNotAllowed, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		r, _ := http.NewRequest(http.MethodDelete, f.e.url+httpapi.WellKnown, nil)
		return r
	})

	// Rekey.
	A := http.StatusUnauthorized
	add("rekey signed with AK", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.rekey(func(r *request, _ *wire.ExchangeRequest) { r.key = f.sess.AK[:] })
	})
	add("rekey with typ jwc-req", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.rekey(func(r *request, _ *wire.ExchangeRequest) { r.typ = jwc.TypeRequest })
	})
	add("rekey carrying a credential", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		return f.rekey(func(_ *request, m *wire.ExchangeRequest) { m.ClientCredential = f.credKey() })
	})
	add("rekey with nonce p−1", U, exchange.InvalidPublicKey, func(t *testing.T, f *fixture) *http.Request {
		return f.rekey(func(_ *request, m *wire.ExchangeRequest) {
			m.ClientNonce = wireKey(group.ToWire(new(big.Int).Sub(p, one)))
		})
	})
	add("rekey of a garbage ticket", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.rekey(func(r *request, _ *wire.ExchangeRequest) { r.ticket = randomBytes(120) })
	})
	add("rekey with a body that is not the signed one", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.rekey(func(r *request, m *wire.ExchangeRequest) {
			signed, _ := json.Marshal(m)
			r.claims = &jwc.Claims{Method: "POST", Target: httpapi.WellKnown, IssuedAt: f.e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(signed)}
			m.ClientNonce = goodKey(t)
		})
	})
	add("rekey with an empty body, signed as empty", B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
		return f.rekey(func(r *request, _ *wire.ExchangeRequest) { r.body = []byte{} })
	})
	add("rekey with Authorization of another scheme", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		_, msg, _ := f.sess.NewRekey(rand.Reader, nil)
		r := f.postJSON(mustJSON(msg))
		r.Header.Set("Authorization", "Bearer abc")
		return r
	})

	// Authenticated requests.
	get := func(mutate func(f *fixture, r *request)) func(t *testing.T, f *fixture) *http.Request {
		return func(t *testing.T, f *fixture) *http.Request {
			return f.authed(http.MethodGet, "/v1/whoami", nil, func(r *request) { mutate(f, r) })
		}
	}
	add("no Authorization", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, f.e.url+"/v1/whoami", nil)
		return r
	})
	add("Authorization Bearer", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		r := f.authed(http.MethodGet, "/v1/whoami", nil, nil)
		r.Header.Set("Authorization", "Bearer "+strings.TrimPrefix(r.Header.Get("Authorization"), "JWC "))
		return r
	})
	add("token garbage", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.token = "garbage" }))
	add("token of 9,000 bytes", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.token = strings.Repeat("a", 9000) }))
	add("alg none", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		parts := strings.Split(forgeJWS(`{"alg":"none","kid":"`+b64(r.ticket)+`","typ":"jwc-req"}`, r.claims, r.key), ".")
		r.token = parts[0] + "." + parts[1] + "."
	}))
	add("alg HS256", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		r.token = forgeJWS256(`{"alg":"HS256","kid":"`+b64(r.ticket)+`","typ":"jwc-req"}`, r.claims, r.key)
	}))
	add("alg hs512 (lower case)", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		r.token = forgeJWS(`{"alg":"hs512","kid":"`+b64(r.ticket)+`","typ":"jwc-req"}`, r.claims, r.key)
	}))
	add("duplicate alg header", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		r.token = forgeJWS(`{"alg":"HS512","alg":"none","kid":"`+b64(r.ticket)+`","typ":"jwc-req"}`, r.claims, r.key)
	}))
	add("crit header", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		r.token = forgeJWS(`{"alg":"HS512","kid":"`+b64(r.ticket)+`","typ":"jwc-req","crit":["exp"]}`, r.claims, r.key)
	}))
	add("MAC under EK", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.key = f.sess.EK[:] }))
	add("MAC truncated", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		tok, _ := jwc.SignOnce(r.key, r.ticket, r.typ, r.claims)
		r.token = tok[:len(tok)-10]
	}))
	add("typ jwc-rekey on a request", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.typ = jwc.TypeRekey }))
	add("typ JWT", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.typ = "JWT" }))
	add("iat in the future", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.claims.IssuedAt += 120 }))
	add("iat in the past", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.claims.IssuedAt -= 120 }))
	add("iat missing", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.claims.IssuedAt = 0 }))
	add("wrong htm", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.claims.Method = "POST" }))
	add("wrong htu", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.claims.Target = "/v1/echo" }))
	add("htu with another query", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.claims.Target = "/v1/whoami?admin=1" }))
	add("unknown claim", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		c := map[string]any{"htm": "GET", "htu": "/v1/whoami", "iat": r.claims.IssuedAt, "jti": r.claims.ID, "bdh": r.claims.BodyHash, "admin": true}
		r.token = forgeJWS(`{"alg":"HS512","kid":"`+b64(r.ticket)+`","typ":"jwc-req"}`, c, r.key)
	}))
	add("body hash mismatch", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodPost, "/v1/echo", []byte(`"sent"`), func(r *request) { r.claims.BodyHash = jwc.BodyHash([]byte(`"signed"`)) })
	})
	add("garbage ticket", A, exchange.BadAuthentication, get(func(f *fixture, r *request) { r.ticket = randomBytes(150) }))
	add("tampered ticket", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		t := append([]byte(nil), r.ticket...)
		t[len(t)/2] ^= 1
		r.ticket = t
	}))
	add("ticket with an unknown key id", A, exchange.BadAuthentication, get(func(f *fixture, r *request) {
		t := append([]byte(nil), r.ticket...)
		t[2] ^= 0xff
		r.ticket = t
	}))
	add("foreign ticket", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		other, _ := keystore.NewSoftware(nil)
		s := &ticket.Session{Account: "alice@example.com", CredentialKID: f.key.Public().KeyID(), IssuedAt: f.e.clock.Now(),
			Expires: f.e.clock.Now().Add(time.Hour), RekeyExpires: f.e.clock.Now().Add(time.Hour),
			Encryption: exchange.DefaultSuite.Encryption, Authentication: exchange.DefaultSuite.Authentication, AK: f.sess.AK}
		pt, _ := s.MarshalBinary()
		sealed, err := ticket.Seal(context.Background(), other, rand.Reader, pt)
		if err != nil {
			t.Fatal(err)
		}
		return f.authed(http.MethodGet, "/v1/whoami", nil, func(r *request) { r.ticket = sealed })
	})
	add("JWE under the wrong key", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		enc, _ := jwc.Encrypt(randomBytes(64), f.sess.Ticket, []byte(`"hi"`), "application/json")
		return f.jose(enc)
	})
	add("JWE with tampered ciphertext", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		enc, _ := jwc.Encrypt(f.sess.EK[:], f.sess.Ticket, []byte(`"hi there, service"`), "application/json")
		parts := strings.Split(enc, ".")
		c := []byte(parts[3])
		c[2] ^= 0x01
		parts[3] = string(c)
		return f.jose(strings.Join(parts, "."))
	})
	add("JWE naming another ticket", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		enc, _ := jwc.Encrypt(f.sess.EK[:], randomBytes(100), []byte(`"hi"`), "application/json")
		return f.jose(enc)
	})
	add("JWE that is not a JWE", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request { return f.jose("a.b.c.d.e") })
	add("oversized echo body", http.StatusRequestEntityTooLarge, exchange.TooLarge, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodPost, "/v1/echo", bytes.Repeat([]byte("a"), 70<<10), nil)
	})
	add("session of a disabled account", http.StatusForbidden, exchange.AccountDisabled, func(t *testing.T, f *fixture) *http.Request {
		f.e.clock.Advance(statusTTL)           // the loop enabled it: let the engine see that
		s := rawExchange(t, f.e.url, f.banned) // still enabled while exchanging…
		ctx := context.Background()
		f.e.reg.SetDisabled(ctx, "banned@example.com", true)
		f.e.clock.Advance(statusTTL)
		old := f.sess
		f.sess = s
		r := f.authed(http.MethodGet, "/v1/whoami", nil, nil)
		f.sess = old
		return r
	})
	add("replayed request", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		r := f.authed(http.MethodGet, "/v1/whoami", nil, nil)
		if resp, err := http.DefaultClient.Do(r.Clone(context.Background())); err != nil || resp.StatusCode != 200 {
			t.Fatalf("first sending: %v", err)
		}
		return r
	})
	// SPEC v1.1 §6: the header claims and enc.
	add("v1 request token (no hds, hdh)", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodGet, "/v1/whoami", nil, func(r *request) {
			r.token, _ = jwc.SignOnce(r.key, r.ticket, r.typ, &jwc.Claims{Method: "GET", Target: "/v1/whoami", IssuedAt: f.e.clock.Now().Unix(), ID: jwc.NewID(), BodyHash: jwc.BodyHash(nil)})
		})
	})
	add("hds name not lowercase", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodPost, "/v1/echo", []byte(`"x"`), func(r *request) {
			r.claims.Headers = []string{"Content-Type"}
			r.claims.HeaderHash, _ = jwc.HeaderHash(r.claims.Headers, http.Header{"Content-Type": {"application/json"}})
		})
	})
	add("hds names a header twice", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodPost, "/v1/echo", []byte(`"x"`), func(r *request) {
			r.claims.Headers = []string{"content-type", "content-type"}
			r.claims.HeaderHash, _ = jwc.HeaderHash(r.claims.Headers, http.Header{"Content-Type": {"application/json"}})
		})
	})
	add("hds names a header the request lacks", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodGet, "/v1/whoami", nil, func(r *request) {
			r.claims.Headers = []string{"x-role"}
			r.claims.HeaderHash, _ = jwc.HeaderHash(r.claims.Headers, http.Header{"X-Role": {"user"}})
		})
	})
	add("hdh of other header values", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodPost, "/v1/echo", []byte(`"x"`), func(r *request) {
			r.claims.Headers = []string{"content-type"}
			r.claims.HeaderHash, _ = jwc.HeaderHash(r.claims.Headers, http.Header{"Content-Type": {"text/html"}})
		})
	})
	add("enc names another encryption", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodGet, "/v1/whoami", nil, func(r *request) { r.claims.Encryption = "A128GCM" })
	})
	add("enc with a body that is not a JWE", A, exchange.BadAuthentication, func(t *testing.T, f *fixture) *http.Request {
		return f.authed(http.MethodPost, "/v1/echo", []byte(`"plain"`), func(r *request) { r.claims.Encryption = jwc.A256CBCHS512 })
	})
	add("expired session", A, exchange.TicketExpired, func(t *testing.T, f *fixture) *http.Request {
		f.e.clock.Advance(61 * time.Minute)
		return f.authed(http.MethodGet, "/v1/whoami", nil, nil)
	})
	// Dot segments, raw or percent-encoded, with "/", "%2F", "\" or "%5C"
	// as separators (SPEC §6): refused before anything else, signed or not.
	for _, path := range []string{"/v1/../v1/whoami", "/v1/%2e%2e/v1/whoami", "/v1/%2E/whoami", "/v1%2F..%2Fv1/whoami", "/v1/%5C..%5Cwhoami", "/v1/.%2e/whoami"} {
		add("dot segment "+path, B, exchange.Malformed, func(t *testing.T, f *fixture) *http.Request {
			return f.authed(http.MethodGet, path, nil, nil)
		})
	}
	return cases
}

func (f *fixture) jose(body string) *http.Request {
	r := f.authed(http.MethodPost, "/v1/echo", []byte(body), nil)
	r.Header.Set("Content-Type", "application/jose")
	return r
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func jwcHMAC(key []byte, signing string) []byte {
	m := hmac.New(sha512.New, key)
	m.Write([]byte(signing))
	return m.Sum(nil)
}

// forgeJWS256 is forgeJWS with HMAC-SHA-256, as an HS256 token would be.
func forgeJWS256(header string, payload any, key []byte) string {
	p, _ := json.Marshal(payload)
	signing := b64([]byte(header)) + "." + b64(p)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signing))
	return signing + "." + b64(m.Sum(nil))
}

// TestHostileInput sends every case of the catalogue to a running service
// and checks the status, the SPEC code, that the body gives nothing away,
// and that a valid exchange is answered right after.
func TestHostileInput(t *testing.T) {
	e := newEnv(t, sqliteDSN(t))
	f := &fixture{e: e, key: e.register(t, "alice@example.com")}
	f.stranger, _ = exchange.GenerateClientKey(rand.Reader, exchange.ModP2048)
	f.banned = e.register(t, "banned@example.com")
	cases := hostileCases()
	if len(cases) < 60 {
		t.Fatalf("the catalogue has %d cases; it must have at least 60", len(cases))
	}
	// The banned account is disabled after its case has made a session;
	// exchanges of it before that are refused by the case itself.
	ctx := context.Background()
	names := map[string]bool{}
	for _, c := range cases {
		if names[c.name] {
			t.Fatalf("two cases named %q", c.name)
		}
		names[c.name] = true
		f.e.reg.SetDisabled(ctx, "banned@example.com", c.name != "session of a disabled account")
		f.sess = rawExchange(t, e.url, f.key)
		req := c.build(t, f)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantRefusal(t, c.name, resp, body, c.status, c.code)
		for _, secret := range [][]byte{f.sess.AK[:], f.sess.EK[:], f.sess.RK[:]} {
			for _, form := range []string{b64(secret), hex.EncodeToString(secret), base64.StdEncoding.EncodeToString(secret)} {
				if strings.Contains(string(body), form) {
					t.Errorf("%s: the body holds a session key", c.name)
				}
			}
		}
		for _, leak := range []string{b64(f.sess.Ticket), "CKR_", "pkcs11", "PKCS#11", "softhsm", "SoftHSM", "goroutine", "panic", "runtime error"} {
			if strings.Contains(string(body), leak) {
				t.Errorf("%s: the body gives away %q: %s", c.name, leak, body)
			}
		}
		if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
			if resp.Header.Get("Retry-After") == "" {
				t.Errorf("%s: no Retry-After", c.name)
			}
		}
	}
	f.e.reg.SetDisabled(ctx, "banned@example.com", true)
	rawExchange(t, e.url, f.key)
	t.Logf("%d hostile requests, each refused with its SPEC code; the service answered a valid exchange after each", len(cases))
}
