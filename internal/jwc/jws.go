package jwc

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/custos-kx/custos/internal/wire"
)

// Compact HS512 JWS, the only JWS jwc uses, is done here rather than by
// go-jose: every authenticated request parses one and signs one, and
// go-jose's general JOSE machinery (header maps, reflection over its own
// JSON fork, re-serialisation on verify) was 40% of the service's CPU per
// request. What this package emits is byte for byte what encoding/json
// would (tested), and interoperability with go-jose is tested in both
// directions.
//
// A session's protected header never changes, so it is encoded once
// (Header) and a service that has seen it can recognise it without
// decoding it again (ParseKnown).

// header is the protected header: exactly these members (SPEC §6).
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid,omitempty"`
	Typ string `json:"typ"`
}

const alg = "HS512"

func (h *header) decode(b []byte) error {
	return decodeFlat(b, func(name []byte, v flatValue) error {
		switch string(name) {
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

// encode returns the header's first part of a compact JWS.
func (h header) encode() string {
	b := []byte(`{"alg":`)
	b = appendString(b, h.Alg)
	if h.Kid != "" {
		b = append(b, `,"kid":`...)
		b = appendString(b, h.Kid)
	}
	b = append(b, `,"typ":`...)
	b = appendString(b, h.Typ)
	b = append(b, '}')
	return b64.EncodeToString(b)
}

var errUnknownMember = errors.New("is not allowed here")

var strictB64 = b64.Strict()

// responseHeader is the first part of every response signature.
var responseHeader = header{Alg: alg, Typ: TypeResponse}.encode()

// Header returns the first part of the tokens of type typ (TypeRequest or
// TypeRekey) for the session whose ticket is t: the encoded protected
// header, the same for every token of the session.
func Header(t []byte, typ string) string {
	return header{Alg: alg, Kid: b64.EncodeToString(t), Typ: typ}.encode()
}

// signJWS returns the compact JWS with the encoded header hdr and payload
// under key; keyHeader says that key was made for hdr.
func signJWS(key *MACKey, hdr string, payload []byte, pre prefix) (string, error) {
	n := len(hdr) + 1 + b64.EncodedLen(len(payload))
	buf := make([]byte, 0, n+1+b64.EncodedLen(sha512.Size))
	buf = append(buf, hdr...)
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, payload)
	mac, ok := inputMAC(key, buf, len(hdr), pre)
	if !ok {
		return "", errors.New("jwc: signing with a session key that was zeroed")
	}
	buf = append(buf, '.')
	buf = b64.AppendEncode(buf, mac[:])
	return string(buf), nil
}

// jws is a parsed compact JWS whose MAC is not checked yet.
type jws struct {
	header       header // zero when the caller recognised the header part
	prefix       prefix // the header part the key has hashed already, if recognised
	signingInput string
	headerLen    int
	payload      []byte
	mac          [sha512.Size]byte
}

// split splits a compact JWS into j and decodes its payload and MAC, but
// not its header: hdr is the header part, still encoded, for the caller
// to decode or to compare with one it knows.
func (j *jws) split(token, what string) (hdr string, err error) {
	if len(token) > MaxTokenSize {
		return "", refuse("the %s is longer than %d bytes", what, MaxTokenSize)
	}
	h, rest, ok1 := strings.Cut(token, ".")
	p, m, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.Contains(m, ".") {
		return "", refuse("the %s is not a JWS in compact form (three base64url parts)", what)
	}
	if len(m) != b64.EncodedLen(sha512.Size) {
		return "", refuse("the %s's MAC is not %d bytes", what, sha512.Size)
	}
	// Go's decoder skips CR and LF even in strict mode; a canonical part
	// has none.
	payload, err1 := strictB64.DecodeString(p)
	n, err2 := strictB64.Decode(j.mac[:], []byte(m))
	if err1 != nil || err2 != nil || n != sha512.Size || hasLineBreak(rest) {
		return "", refuse("the %s is not a JWS in compact form (a part is not canonical base64url)", what)
	}
	j.signingInput, j.headerLen, j.payload = token[:len(h)+1+len(p)], len(h), payload
	return h, nil
}

// hasLineBreak is strings.ContainsAny(s, "\r\n"), several times faster on
// the kilobyte of every request token: IndexByte is vectorised.
func hasLineBreak(s string) bool {
	return strings.IndexByte(s, '\n') >= 0 || strings.IndexByte(s, '\r') >= 0
}

// parseJWS splits and decodes a compact JWS, refusing anything but HS512.
func parseJWS(token, what string) (*jws, error) {
	j := new(jws)
	h, err := j.split(token, what)
	if err != nil {
		return nil, err
	}
	hb, err := strictB64.DecodeString(h)
	if err != nil || hasLineBreak(h) {
		return nil, refuse("the %s is not a JWS in compact form (a part is not canonical base64url)", what)
	}
	if err := j.header.decode(hb); err != nil {
		return nil, refuse("the %s's header is not {alg, kid, typ}: %v", what, err)
	}
	if j.header.Alg != alg {
		return nil, refuse("the %s's alg is %q; only HS512 is accepted", what, wire.Clip(j.header.Alg))
	}
	return j, nil
}

// verify checks the MAC under key in constant time.
func (j *jws) verify(key *MACKey) bool {
	mac, ok := inputMAC(key, j.signingInput, j.headerLen, j.prefix)
	return ok && hmac.Equal(mac[:], j.mac[:])
}

// prefix names a header part whose hashing a MACKey has done already.
type prefix int

const (
	noPrefix       prefix = iota
	ownPrefix             // the header part the key was made for (a session's requests)
	responsePrefix        // responseHeader, which every response signature starts with
)

// inputMAC is the MAC of a JWS signing input whose header part is hdrLen
// bytes and is pre, whose hashing key has done already. Only the bytes
// hashed are converted, so a string input costs a copy of its payload
// part alone.
func inputMAC[T string | []byte](key *MACKey, input T, hdrLen int, pre prefix) ([sha512.Size]byte, bool) {
	switch pre {
	case ownPrefix:
		return key.sumFrom(key.afterHeader, []byte(input[hdrLen+1:]))
	case responsePrefix:
		return key.sumFrom(key.afterResponse, []byte(input[hdrLen+1:]))
	}
	return key.sum([]byte(input))
}

// appendString appends s as a JSON string, as encoding/json writes it.
// The strings of claims and headers are almost always plain ASCII, which
// needs no escaping; anything else goes through encoding/json.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSON appends the claims as encoding/json would marshal them.
func (c *Claims) appendJSON(b []byte) []byte {
	b = append(b, `{"htm":`...)
	b = appendString(b, c.Method)
	b = append(b, `,"htu":`...)
	b = appendString(b, c.Target)
	b = append(b, `,"iat":`...)
	b = strconv.AppendInt(b, c.IssuedAt, 10)
	b = append(b, `,"jti":`...)
	b = appendString(b, c.ID)
	b = append(b, `,"bdh":`...)
	b = appendString(b, c.BodyHash)
	return appendHeaderClaims(b, c.Headers, c.HeaderHash, c.Encryption)
}

func (c *ResponseClaims) appendJSON(b []byte) []byte {
	b = append(b, `{"jti":`...)
	b = appendString(b, c.ID)
	b = append(b, `,"htm":`...)
	b = appendString(b, c.Method)
	b = append(b, `,"htu":`...)
	b = appendString(b, c.Target)
	b = append(b, `,"sts":`...)
	b = strconv.AppendInt(b, int64(c.Status), 10)
	b = append(b, `,"bdh":`...)
	b = appendString(b, c.BodyHash)
	return appendHeaderClaims(b, c.Headers, c.HeaderHash, c.Encryption)
}

// appendHeaderClaims appends hds, hdh and enc (if set), and closes the object.
func appendHeaderClaims(b []byte, hds []string, hdh, enc string) []byte {
	b = append(b, `,"hds":[`...)
	for i, name := range hds {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, name)
	}
	b = append(b, `],"hdh":`...)
	b = appendString(b, hdh)
	if enc != "" {
		b = append(b, `,"enc":`...)
		b = appendString(b, enc)
	}
	return append(b, '}')
}
