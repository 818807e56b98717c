package jwc

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"strings"

	"github.com/custos-kx/custos/exchange/wire"
)

// Compact HS512 JWS, the only JWS jwc uses, is done here rather than by
// go-jose: every authenticated request parses one and signs one, and
// go-jose's general JOSE machinery (header maps, reflection over its own
// JSON fork, re-serialisation on verify) was 40% of the service's CPU per
// request. Interoperability with go-jose is tested in both directions.

// header is the protected header: exactly these members (SPEC §6).
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid,omitempty"`
	Typ string `json:"typ"`
}

const alg = "HS512"

func (h *header) decode(b []byte) error {
	return wire.DecodeFlat(b, func(name string, v wire.FlatValue) error {
		switch name {
		case "alg":
			return v.Text(&h.Alg)
		case "kid":
			return v.Text(&h.Kid)
		case "typ":
			return v.Text(&h.Typ)
		}
		return errUnknownMember
	})
}

var errUnknownMember = errors.New("is not allowed here")

var strictB64 = b64.Strict()

// signJWS returns the compact JWS of payload (marshalled to JSON) under key.
func signJWS(key []byte, h header, payload any) (string, error) {
	hb, err := json.Marshal(h)
	if err != nil {
		return "", err
	}
	pb, err := json.Marshal(payload)
	if err != nil {
		return "", err
	}
	n := b64.EncodedLen(len(hb)) + 1 + b64.EncodedLen(len(pb))
	buf := make([]byte, 0, n+1+b64.EncodedLen(sha512.Size))
	buf = b64.AppendEncode(buf, hb)
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, pb)
	mac := hmac.New(sha512.New, key)
	mac.Write(buf)
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, mac.Sum(nil))
	return string(buf), nil
}

// jws is a parsed compact JWS whose MAC is not checked yet.
type jws struct {
	header       header
	signingInput string
	payload      []byte
	mac          []byte
}

// parseJWS splits and decodes a compact JWS, refusing anything but HS512.
func parseJWS(token, what string) (*jws, error) {
	if len(token) > MaxTokenSize {
		return nil, refuse("the %s is longer than %d bytes", what, MaxTokenSize)
	}
	h, rest, ok1 := strings.Cut(token, ".")
	p, m, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(m, ".") {
		return nil, refuse("the %s is not a JWS in compact form (three base64url parts)", what)
	}
	hb, err1 := strictB64.DecodeString(h)
	payload, err2 := strictB64.DecodeString(p)
	mac, err3 := strictB64.DecodeString(m)
	if err1 != nil || err2 != nil || err3 != nil || strings.ContainsAny(token, "\r\n") {
		return nil, refuse("the %s is not a JWS in compact form (a part is not canonical base64url)", what)
	}
	var hdr header
	if err := hdr.decode(hb); err != nil {
		return nil, refuse("the %s's header is not {alg, kid, typ}: %v", what, err)
	}
	if hdr.Alg != alg {
		return nil, refuse("the %s's alg is %q; only HS512 is accepted", what, clip(hdr.Alg))
	}
	if len(mac) != sha512.Size {
		return nil, refuse("the %s's MAC is %d bytes, not %d", what, len(mac), sha512.Size)
	}
	return &jws{header: hdr, signingInput: token[:len(h)+1+len(p)], payload: payload, mac: mac}, nil
}

// verify checks the MAC under key in constant time.
func (j *jws) verify(key []byte) bool {
	mac := hmac.New(sha512.New, key)
	mac.Write([]byte(j.signingInput))
	return hmac.Equal(mac.Sum(nil), j.mac)
}
