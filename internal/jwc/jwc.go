// Package jwc is the envelope of requests made under a jwcexchange session
// (SPEC §6, §7): an HS512 JWS in the Authorization header naming the
// session's ticket, a JWS over each response, and A256CBC-HS512 JWE bodies.
// Service and client both use it, so they cannot disagree on a detail.
//
// JWE is go-jose's; the compact HS512 JWS, on every request's hot path, is
// this package's own (jws.go says why). Either way the package fixes what
// may vary: one algorithm, a typ that says what the token is for, and
// headers and claims decoded strictly.
package jwc

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

// Token types (the JWS typ header).
const (
	TypeRequest  = "jwc-req"
	TypeRekey    = "jwc-rekey"
	TypeResponse = "jwc-resp"
)

// Scheme is the Authorization scheme.
const Scheme = "JWC"

// MaxSkew is how far a request's iat may be from the service's clock.
const MaxSkew = 60 * time.Second

// Claims are the payload of a request token (SPEC §6).
type Claims struct {
	Method   string `json:"htm"`
	Target   string `json:"htu"` // path?query
	IssuedAt int64  `json:"iat"`
	ID       string `json:"jti"`
	BodyHash string `json:"bdh"`
	// Headers (hds) names the headers covered, lowercase, in the order
	// hashed into HeaderHash (hdh). A token without them is a protocol v1
	// token (Headers nil after decoding).
	Headers    []string `json:"hds"`
	HeaderHash string   `json:"hdh"`
	// Encryption (enc) is A256CBCHS512 when the body and the response are
	// encrypted, else empty (absent).
	Encryption string `json:"enc,omitempty"`
}

// ResponseClaims are the payload of a response signature: the request it
// answers as the service received it, and the response as sent.
type ResponseClaims struct {
	ID         string   `json:"jti"`
	Method     string   `json:"htm"`
	Target     string   `json:"htu"`
	Status     int      `json:"sts"`
	BodyHash   string   `json:"bdh"`
	Headers    []string `json:"hds"`
	HeaderHash string   `json:"hdh"`
	Encryption string   `json:"enc,omitempty"`
}

// A256CBCHS512 is the one content encryption of JWE bodies, and the value
// of the enc claim.
const A256CBCHS512 = "A256CBC-HS512"

func (c *Claims) decode(b []byte) error {
	return decodeFlat(b, func(name []byte, v flatValue) error {
		switch string(name) {
		case "htm":
			return v.Text(&c.Method)
		case "htu":
			return v.Text(&c.Target)
		case "iat":
			return v.Int(&c.IssuedAt)
		case "jti":
			return v.Text(&c.ID)
		case "bdh":
			return v.Text(&c.BodyHash)
		case "hds":
			return v.Strings(&c.Headers)
		case "hdh":
			return v.Text(&c.HeaderHash)
		case "enc":
			return v.Text(&c.Encryption)
		}
		return errUnknownMember
	})
}

func (c *ResponseClaims) decode(b []byte) error {
	return decodeFlat(b, func(name []byte, v flatValue) error {
		switch string(name) {
		case "jti":
			return v.Text(&c.ID)
		case "htm":
			return v.Text(&c.Method)
		case "htu":
			return v.Text(&c.Target)
		case "sts":
			var n int64
			if err := v.Int(&n); err != nil {
				return err
			}
			c.Status = int(n)
			return nil
		case "bdh":
			return v.Text(&c.BodyHash)
		case "hds":
			return v.Strings(&c.Headers)
		case "hdh":
			return v.Text(&c.HeaderHash)
		case "enc":
			return v.Text(&c.Encryption)
		}
		return errUnknownMember
	})
}

var b64 = base64.RawURLEncoding

// BodyHash returns b64u(SHA-512(body)).
func BodyHash(body []byte) string {
	if len(body) == 0 {
		return emptyBodyHash // most requests are GETs
	}
	return bodyHash(body)
}

var emptyBodyHash = bodyHash(nil)

func bodyHash(body []byte) string {
	h := sha512.Sum512(body)
	return b64.EncodeToString(h[:])
}

// NewID returns a fresh jti: 16 random bytes.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return b64.EncodeToString(b[:])
}

// Signer makes the request tokens of one session (or its rekey token):
// the session's key, prepared for the header part all of them carry, and
// that header part.
type Signer struct {
	key *MACKey
	hdr string
}

// NewSigner prepares key (the session's AK, or RK for a rekey) for the
// tokens of type typ of the session whose ticket is t. The caller keeps
// ownership of key.
func NewSigner(key, t []byte, typ string) *Signer {
	hdr := Header(t, typ)
	return &Signer{key: NewMACKey(key, hdr), hdr: hdr}
}

// Sign makes a token with the claims c.
func (s *Signer) Sign(c *Claims) (string, error) {
	return signJWS(s.key, s.hdr, c.appendJSON(make([]byte, 0, 320)), ownPrefix)
}

// Key returns the signer's prepared key, which also checks the session's
// response signatures.
func (s *Signer) Key() *MACKey { return s.key }

// Zero clears the signer's key.
func (s *Signer) Zero() { s.key.Zero() }

// SignOnce makes a single token for the session whose ticket is t under
// the raw key (RK for a rekey, which happens once per session). A Signer
// is for a session's many requests.
func SignOnce(key, t []byte, typ string, c *Claims) (string, error) {
	s := NewSigner(key, t, typ)
	defer s.Zero()
	return s.Sign(c)
}

// Error says why a token was refused.
type Error struct {
	Reason string
}

func (e *Error) Error() string { return e.Reason }

func refuse(format string, args ...any) error { return &Error{Reason: fmt.Sprintf(format, args...)} }

// Request is a parsed request token whose MAC has not been checked yet: the
// service must first open Ticket to learn the key.
type Request struct {
	jws    *jws
	Ticket []byte // nil from ParseKnown
	Type   string
}

// MaxTokenSize bounds what Parse looks at.
const MaxTokenSize = 8192

// Parse reads a request token. Only HS512 is accepted: "none", HS256 and
// every other algorithm are refused before anything else is looked at.
func Parse(token string) (*Request, error) {
	j, err := parseJWS(token, "token")
	if err != nil {
		return nil, err
	}
	t, err := strictB64.DecodeString(j.header.Kid)
	if err != nil || len(t) == 0 || len(t) > ticket.MaxSize {
		return nil, refuse("the token's kid is not a ticket")
	}
	if typ := j.header.Typ; typ != TypeRequest && typ != TypeRekey {
		return nil, refuse("the token's typ is %q, not %q or %q", wire.Clip(typ), TypeRequest, TypeRekey)
	}
	return &Request{jws: j, Ticket: t, Type: j.header.Typ}, nil
}

// HeaderPart returns the first part of a compact token, its encoded
// protected header.
func HeaderPart(token string) string {
	h, _, _ := strings.Cut(token, ".")
	return h
}

// ParseKnown reads a request token whose header part the caller has
// recognised as Header(t, typ) of a session it knows (by comparing it, or
// its hash, with one it made): the header is not decoded again, the
// Request has no Ticket, and Verify takes the key made for that header.
func ParseKnown(token, typ string) (*Request, error) {
	r := &Request{jws: &jws{prefix: ownPrefix}, Type: typ}
	if _, err := r.jws.split(token, "token"); err != nil {
		return nil, err
	}
	return r, nil
}

// Verify checks the MAC under key (in constant time) and decodes the
// claims. A Request from ParseKnown must be verified with the key made
// for the header it was recognised as.
func (r *Request) Verify(key *MACKey) (*Claims, error) {
	if !r.jws.verify(key) {
		return nil, refuse("the token's MAC does not verify")
	}
	var c Claims
	if err := c.decode(r.jws.payload); err != nil {
		return nil, refuse("the token's claims are malformed: %v", err)
	}
	if c.Headers == nil || c.HeaderHash == "" {
		return nil, refuse("the token has no hds and hdh claims: it is a protocol v1 token, and this service speaks v1.1 (SPEC §6); update the client")
	}
	if c.Method == "" || c.Target == "" || c.ID == "" || c.BodyHash == "" || c.IssuedAt == 0 {
		return nil, refuse("the token lacks one of htm, htu, iat, jti, bdh")
	}
	if c.Encryption != "" && c.Encryption != A256CBCHS512 {
		return nil, refuse("the token's enc is %q; only %s is supported", wire.Clip(c.Encryption), A256CBCHS512)
	}
	return &c, nil
}

// SignResponse makes the JWC-Signature of a response.
func SignResponse(key *MACKey, c *ResponseClaims) (string, error) {
	return signJWS(key, responseHeader, c.appendJSON(make([]byte, 0, 320)), responsePrefix)
}

// VerifyResponse checks a response signature under key and returns its claims.
func VerifyResponse(key *MACKey, token string) (*ResponseClaims, error) {
	const what = "response signature"
	var j *jws
	var err error
	if HeaderPart(token) == responseHeader {
		j = &jws{prefix: responsePrefix}
		_, err = j.split(token, what) // the header every service sends
	} else if j, err = parseJWS(token, what); err == nil && j.header.Typ != TypeResponse {
		err = refuse("the response signature's typ is not %q", TypeResponse)
	}
	if err != nil {
		return nil, err
	}
	if !j.verify(key) {
		return nil, refuse("the response signature does not verify")
	}
	var c ResponseClaims
	if err := c.decode(j.payload); err != nil {
		return nil, refuse("the response signature's claims are malformed")
	}
	return &c, nil
}

// DefaultMediaType is the media type of a body that names none.
const DefaultMediaType = "application/octet-stream"

// Encrypt makes a JWE body under key (EK) for the session whose ticket is
// t; cty is the plaintext's media type (SPEC §6).
func Encrypt(key, t, plaintext []byte, cty string) (string, error) {
	if cty == "" {
		cty = DefaultMediaType
	}
	enc, err := jose.NewEncrypter(jose.A256CBC_HS512,
		jose.Recipient{Algorithm: jose.DIRECT, Key: key, KeyID: b64.EncodeToString(t)},
		(&jose.EncrypterOptions{}).WithContentType(jose.ContentType(cty)))
	if err != nil {
		return "", err
	}
	obj, err := enc.Encrypt(plaintext)
	if err != nil {
		return "", err
	}
	return obj.CompactSerialize()
}

// Decrypt opens a JWE body under key and returns the plaintext and its
// media type. t is the session's ticket, which the JWE's kid must name.
func Decrypt(key, t []byte, token string) (plaintext []byte, cty string, err error) {
	obj, err := jose.ParseEncryptedCompact(token, []jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256CBC_HS512})
	if err != nil {
		return nil, "", refuse("the body is not a dir/A256CBC-HS512 JWE in compact form")
	}
	if obj.Header.KeyID != b64.EncodeToString(t) {
		return nil, "", refuse("the body's JWE kid does not name this session's ticket")
	}
	pt, err := obj.Decrypt(key)
	if err != nil {
		return nil, "", refuse("the body does not decrypt under this session's key")
	}
	cty, _ = obj.Header.ExtraHeaders[jose.HeaderContentType].(string)
	if cty == "" {
		cty = DefaultMediaType
	}
	return pt, cty, nil
}

// HeaderHash returns hdh for the headers names (lowercase, as in hds) of
// h: for each name, each of its field lines in order, name ":" value
// (trimmed) "\n", hashed with SHA-512 (SPEC §6). ok is false when a named
// header is absent.
func HeaderHash(names []string, h map[string][]string) (hdh string, ok bool) {
	if len(names) == 0 {
		return noHeadersHash, true // most requests: a GET with no header of its own
	}
	d := sha512.New()
	var buf [256]byte
	for _, name := range names {
		values := lookupFold(h, name)
		if len(values) == 0 {
			return "", false
		}
		for _, v := range values {
			line := append(buf[:0], name...)
			line = append(line, ':')
			line = append(line, strings.TrimSpace(v)...)
			d.Write(append(line, '\n'))
		}
	}
	var sum [sha512.Size]byte
	return b64.EncodeToString(d.Sum(sum[:0])), true
}

var noHeadersHash = bodyHash(nil) // the hash of no lines

// lookupFold returns the values of header name in h, whatever the case of
// its key: a header map's keys are canonical, hds names lowercase. A scan
// of the few keys beats canonicalising, which allocates.
func lookupFold(h map[string][]string, name string) []string {
	if vs, ok := h[name]; ok {
		return vs
	}
	for k, vs := range h {
		if strings.EqualFold(k, name) {
			return vs
		}
	}
	return nil
}
