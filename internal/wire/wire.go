// Package wire holds the jwcexchange message types and their JSON encoding,
// byte-compatible with the 2017 example: objects tagged by their type name,
// binary values in base64url without padding, public values in .NET's
// little-endian two's-complement form.
//
// Decoding is strict where the protocol needs it to be: a member name that
// appears twice in one object (names are exact and case-sensitive, SPEC §2)
// is refused rather than resolved, as is nesting deeper than any message
// needs.
package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Suite is one offered combination of algorithms.
type Suite struct {
	Encryption     []string `json:"Encryption"`
	Authentication []string `json:"Authentication"`
}

// KeyType is the tag a public key appears under on the wire.
type KeyType uint8

const (
	// KeyDH is a group-14 key, {"PublicKeyDH": {"kid", "Domain", "Public"}}.
	KeyDH KeyType = iota
	// KeyECDH is a P-256 key, {"PublicKeyECDH": {"kid", "crv", "Public"}}.
	KeyECDH
)

func (t KeyType) String() string {
	if t == KeyECDH {
		return tagECDH
	}
	return tagDH
}

// PublicKey is a PublicKeyDH or PublicKeyECDH object, by Type. It always
// appears on the wire inside its tag. Domain is PublicKeyDH's member and
// Curve PublicKeyECDH's ("crv", which decoding requires to be present and
// a string, SPEC §9); each is ignored for the other type.
type PublicKey struct {
	Type   KeyType
	KID    string
	Domain Bytes
	Curve  string
	Public Bytes
}

// ExchangeRequest starts an exchange (both keys) or a rekey (ClientNonce only).
// A nil Offer means the member was absent; an empty one was sent as [].
type ExchangeRequest struct {
	ClientCredential *PublicKey `json:"ClientCredential,omitempty"`
	ClientNonce      *PublicKey `json:"ClientNonce,omitempty"`
	Offer            []Suite    `json:"Offer,omitzero"`
}

// ExchangeResponse answers an exchange or rekey. An error response has only
// Status, StatusDescription and Error.
type ExchangeResponse struct {
	Status            int        `json:"Status"`
	StatusDescription string     `json:"StatusDescription"`
	Error             string     `json:"Error,omitempty"`
	Ticket            Bytes      `json:"Ticket,omitempty"`
	Witness           Bytes      `json:"Witness,omitempty"`
	ServerCredential  *PublicKey `json:"ServerCredential,omitempty"`
	ServerNonce       *PublicKey `json:"ServerNonce,omitempty"`
	Encryption        []string   `json:"Encryption,omitempty"`
	Authentication    []string   `json:"Authentication,omitempty"`
}

// ServiceDescription is the discovery document (SPEC §8). ServerCredential
// and Domain are the group-14 profile's, absent when the service does not
// serve it; Credentials lists the credential of every profile served.
type ServiceDescription struct {
	ServerCredential *PublicKey  `json:"ServerCredential,omitempty"`
	Domain           Bytes       `json:"Domain,omitempty"`
	Encryption       []string    `json:"Encryption"`
	Authentication   []string    `json:"Authentication"`
	Credentials      []PublicKey `json:"Credentials"`
}

// Tags, as they appear on the wire.
const (
	tagDH          = "PublicKeyDH"
	tagECDH        = "PublicKeyECDH"
	tagRequest     = "ExchangeRequest"
	tagResponse    = "ExchangeResponse"
	tagDescription = "ServiceDescription"
)

// Each tagged type marshals through a plain twin to avoid recursing into its
// own MarshalJSON.
type (
	plainRequest     ExchangeRequest
	plainResponse    ExchangeResponse
	plainDescription ServiceDescription
)

// The members of each key type, in the example's order.
type (
	dhMembers struct {
		KID    string `json:"kid"`
		Domain Bytes  `json:"Domain"`
		Public Bytes  `json:"Public"`
	}
	ecdhMembers struct {
		KID    string  `json:"kid"`
		Curve  *string `json:"crv"`
		Public Bytes   `json:"Public"`
	}
)

func (k PublicKey) MarshalJSON() ([]byte, error) { return k.appendJSON(nil), nil }
func (m ExchangeRequest) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		V plainRequest `json:"ExchangeRequest"`
	}{plainRequest(m)})
}
func (m ExchangeResponse) MarshalJSON() ([]byte, error) {
	return m.appendJSON(make([]byte, 0, 1024)), nil
}
func (m ServiceDescription) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		V plainDescription `json:"ServiceDescription"`
	}{plainDescription(m)})
}

// A response and its keys are written by hand, field by field in the
// order and with the omissions their struct tags give: every exchange
// sends one, and encoding/json, reflecting over nested MarshalJSON methods
// and validating each one's output again, cost more than the rest of the
// response's handling. TestMarshalMatchesEncodingJSON holds the bytes to
// encoding/json's.

func (k PublicKey) appendJSON(b []byte) []byte {
	if k.Type == KeyECDH {
		b = append(b, `{"PublicKeyECDH":{"kid":`...)
		b = appendString(b, k.KID)
		b = append(b, `,"crv":`...)
		b = appendString(b, k.Curve)
	} else {
		b = append(b, `{"PublicKeyDH":{"kid":`...)
		b = appendString(b, k.KID)
		b = append(b, `,"Domain":`...)
		b = k.Domain.appendJSON(b)
	}
	b = append(b, `,"Public":`...)
	b = k.Public.appendJSON(b)
	return append(b, "}}"...)
}

func (m ExchangeResponse) appendJSON(b []byte) []byte {
	b = append(b, `{"ExchangeResponse":{"Status":`...)
	b = strconv.AppendInt(b, int64(m.Status), 10)
	b = append(b, `,"StatusDescription":`...)
	b = appendString(b, m.StatusDescription)
	if m.Error != "" {
		b = append(b, `,"Error":`...)
		b = appendString(b, m.Error)
	}
	if len(m.Ticket) > 0 {
		b = append(b, `,"Ticket":`...)
		b = m.Ticket.appendJSON(b)
	}
	if len(m.Witness) > 0 {
		b = append(b, `,"Witness":`...)
		b = m.Witness.appendJSON(b)
	}
	if m.ServerCredential != nil {
		b = append(b, `,"ServerCredential":`...)
		b = m.ServerCredential.appendJSON(b)
	}
	if m.ServerNonce != nil {
		b = append(b, `,"ServerNonce":`...)
		b = m.ServerNonce.appendJSON(b)
	}
	for _, list := range []struct {
		name   string
		values []string
	}{{"Encryption", m.Encryption}, {"Authentication", m.Authentication}} {
		if len(list.values) == 0 {
			continue
		}
		b = append(b, `,"`+list.name+`":[`...)
		for i, v := range list.values {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, v)
		}
		b = append(b, ']')
	}
	return append(b, "}}"...)
}

// appendString appends s as encoding/json writes a string: as it is when
// it holds only printable ASCII that needs no escape, through
// encoding/json otherwise.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// UnmarshalJSON decodes either key type. An object carrying both tags is
// refused: which key it is would be a guess.
func (k *PublicKey) UnmarshalJSON(b []byte) error {
	outer, ok := splitObject(b)
	if !ok {
		return &DecodeError{Reason: "expected a key object tagged PublicKeyDH or PublicKeyECDH"}
	}
	dh, ec := outer.get(tagDH) != nil, outer.get(tagECDH) != nil
	switch {
	case dh && ec:
		return &DecodeError{Reason: "a key object is tagged both PublicKeyDH and PublicKeyECDH"}
	case !dh && !ec:
		return &DecodeError{Reason: "expected a key object tagged PublicKeyDH or PublicKeyECDH"}
	case ec:
		var m ecdhMembers
		if err := untagged(outer, tagECDH, &m); err != nil {
			return err
		}
		if m.Curve == nil {
			return &DecodeError{Reason: "the PublicKeyECDH key has no crv member"}
		}
		*k = PublicKey{Type: KeyECDH, KID: m.KID, Curve: *m.Curve, Public: m.Public}
	default:
		var m dhMembers
		if err := untagged(outer, tagDH, &m); err != nil {
			return err
		}
		*k = PublicKey{Type: KeyDH, KID: m.KID, Domain: m.Domain, Public: m.Public}
	}
	return nil
}
func (m *ExchangeRequest) UnmarshalJSON(b []byte) error {
	return untag(b, tagRequest, (*plainRequest)(m))
}
func (m *ExchangeResponse) UnmarshalJSON(b []byte) error {
	return untag(b, tagResponse, (*plainResponse)(m))
}
func (m *ServiceDescription) UnmarshalJSON(b []byte) error {
	return untag(b, tagDescription, (*plainDescription)(m))
}

func (s *Suite) UnmarshalJSON(b []byte) error {
	type plainSuite Suite
	return exact(b, (*plainSuite)(s))
}

// untag decodes {tag: value} into v. Other members beside the tag are ignored.
func untag(b []byte, tag string, v any) error {
	outer, ok := splitObject(b)
	if !ok {
		return &DecodeError{Reason: fmt.Sprintf("expected an object tagged %q", tag)}
	}
	return untagged(outer, tag, v)
}

// untagged decodes the member tag of an object already split into members.
func untagged(outer members, tag string, v any) error {
	inner := outer.get(tag)
	if inner == nil {
		return &DecodeError{Reason: fmt.Sprintf("expected an object tagged %q", tag)}
	}
	if len(inner) == 0 || inner[0] != '{' {
		return &DecodeError{Reason: fmt.Sprintf("the %s member is not an object", tag)}
	}
	return exact(inner, v)
}

// exact decodes a JSON object into the struct v, matching member names to
// the fields' JSON names exactly (SPEC §2), where encoding/json would also
// take a member whose name differs in case ("clientcredential") or folds
// to it ("ſtatus"). Members that match no field are ignored.
func exact(b []byte, v any) error {
	if string(bytes.TrimSpace(b)) == "null" {
		return nil // as encoding/json leaves a struct alone for null
	}
	ms, ok := splitObject(b)
	if !ok {
		return &DecodeError{Reason: "expected a JSON object"}
	}
	rv := reflect.ValueOf(v).Elem()
	rt := rv.Type()
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		raw := ms.get(name)
		if raw == nil {
			continue
		}
		if err := decodeField(raw, rv.Field(i)); err != nil {
			var de *DecodeError
			if errors.As(err, &de) {
				return de
			}
			return &DecodeError{Reason: fmt.Sprintf("member %s has the wrong type", name)}
		}
	}
	return nil
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// decodeField decodes one member's value into a struct field as
// json.Unmarshal would, taking the short way for the values messages are
// made of: a string without escapes, and an object for a field that
// decodes itself. raw is valid JSON (every decoder here is reached
// through encoding/json or Unmarshal, both of which validate first).
func decodeField(raw []byte, f reflect.Value) error {
	switch {
	case f.Kind() == reflect.String && plainString(raw):
		f.SetString(string(raw[1 : len(raw)-1]))
		return nil
	case f.Kind() == reflect.Pointer && raw[0] == '{' && f.Type().Implements(unmarshalerType):
		n := reflect.New(f.Type().Elem())
		if err := n.Interface().(json.Unmarshaler).UnmarshalJSON(raw); err != nil {
			return err
		}
		f.Set(n)
		return nil
	case raw[0] == '"' && f.Addr().Type().Implements(unmarshalerType):
		return f.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(raw)
	}
	return json.Unmarshal(raw, f.Addr().Interface())
}

// plainString reports whether raw is a JSON string with no escapes and
// valid UTF-8 (which encoding/json would replace), whose value is then the
// bytes between its quotes.
func plainString(raw []byte) bool {
	return len(raw) >= 2 && raw[0] == '"' && bytes.IndexByte(raw[1:len(raw)-1], '\\') < 0 && utf8.Valid(raw)
}

// members are an object's members in order, each name unescaped and its
// value raw.
type members []member

type member struct {
	name string
	raw  []byte
}

// get returns the value of the member name, or nil if there is none. With
// a name twice (which Unmarshal refuses before any decoder sees it) the
// last wins, as with encoding/json.
func (ms members) get(name string) []byte {
	var raw []byte
	for _, m := range ms {
		if m.name == name {
			raw = m.raw
		}
	}
	return raw
}

// splitObject splits a valid JSON value into its members, or reports that
// it is not an object. It is the one pass each level of a message costs,
// where decoding into a map[string]json.RawMessage would scan the bytes
// again to validate them and allocate a map.
func splitObject(b []byte) (members, bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	var ms members
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return ms, true
	}
	for i < len(b) {
		end := valueEnd(b, i) // the name, a string
		name := b[i:end]
		var m member
		if plainString(name) {
			m.name = string(name[1 : len(name)-1])
		} else if json.Unmarshal(name, &m.name) != nil {
			return nil, false
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return nil, false
		}
		i = skipSpace(b, i+1)
		end = valueEnd(b, i)
		m.raw = b[i:end]
		ms = append(ms, m)
		i = skipSpace(b, end)
		if i >= len(b) {
			return nil, false
		}
		switch b[i] {
		case '}':
			return ms, true
		case ',':
			i = skipSpace(b, i+1)
		default:
			return nil, false
		}
	}
	return nil, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// valueEnd returns the index just past the valid JSON value starting at i.
func valueEnd(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	for i < len(b) && !strings.ContainsRune(",}] \t\r\n", rune(b[i])) {
		i++
	}
	return i
}

// stringEnd returns the index just past the string starting at i.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// DecodeError says why a message could not be decoded.
type DecodeError struct {
	Reason string
}

func (e *DecodeError) Error() string { return e.Reason }

// Unmarshal decodes a message after checking its structure: one JSON value,
// no duplicate member names, nesting at most MaxDepth deep.
func Unmarshal(data []byte, v any) error {
	if err := checkStructure(data); err != nil {
		return err
	}
	var err error
	if u, ok := v.(json.Unmarshaler); ok {
		// The messages decode themselves, from bytes checkStructure has
		// just validated: encoding/json would only validate them again.
		err = u.UnmarshalJSON(bytes.TrimSpace(data))
	} else {
		err = json.Unmarshal(data, v)
	}
	if err != nil {
		var de *DecodeError
		if errors.As(err, &de) {
			return de
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return &DecodeError{Reason: fmt.Sprintf("member %s has the wrong type (%s)", te.Field, te.Value)}
		}
		return &DecodeError{Reason: "the body is not a valid message: " + err.Error()}
	}
	return nil
}

// MaxDepth bounds object and array nesting. The deepest message,
// an ExchangeRequest's key, is 4 levels deep.
const MaxDepth = 16

// checkStructure refuses duplicate member names and nesting deeper than
// MaxDepth. Valid JSON is scanned byte by byte, which is several times
// faster than walking it with json.Decoder.Token; invalid JSON is refused
// with encoding/json's reason.
func checkStructure(data []byte) error {
	if !json.Valid(data) {
		var v any
		return syntaxError(json.Unmarshal(data, &v))
	}
	type frame struct {
		object bool
		names  Members
	}
	var stack []frame
	expectName := false
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '{', '[':
			if len(stack) == MaxDepth {
				return &DecodeError{Reason: fmt.Sprintf("the JSON is nested more than %d levels deep", MaxDepth)}
			}
			stack = append(stack, frame{object: c == '{'})
			expectName = c == '{'
		case '}', ']':
			stack = stack[:len(stack)-1]
			expectName = false
		case ',':
			expectName = stack[len(stack)-1].object
		case '"':
			j := i + 1
			for data[j] != '"' {
				if data[j] == '\\' {
					j++
				}
				j++
			}
			if expectName {
				name := data[i+1 : j]
				if bytes.IndexByte(name, '\\') >= 0 {
					var s string
					json.Unmarshal(data[i:j+1], &s)
					name = []byte(s)
				}
				if err := stack[len(stack)-1].names.Add(name); err != nil {
					return err
				}
				expectName = false
			}
			i = j
		}
	}
	return nil
}

// Members records the member names of one JSON object and refuses a name
// seen before in it: the one duplicate-member check of every decoder here
// (SPEC §2: names are exact and case-sensitive, so "Status" and "ſtatus",
// "ClientNonce" and "clientNonce" are different members). The zero value
// is empty; names added must stay unchanged while it is used.
type Members struct {
	few  [8][]byte
	n    int
	many map[string]struct{} // beyond len(few): hostile objects can be large
}

// Add records name, or refuses it if it was recorded before.
func (m *Members) Add(name []byte) error {
	if m.many == nil {
		for _, seen := range m.few[:m.n] {
			if bytes.Equal(seen, name) {
				return duplicate(name)
			}
		}
		if m.n < len(m.few) {
			m.few[m.n] = name
			m.n++
			return nil
		}
		m.many = make(map[string]struct{}, 2*len(m.few))
		for _, seen := range m.few {
			m.many[string(seen)] = struct{}{}
		}
	}
	if _, dup := m.many[string(name)]; dup {
		return duplicate(name)
	}
	m.many[string(name)] = struct{}{}
	return nil
}

func duplicate(name []byte) error {
	return &DecodeError{Reason: fmt.Sprintf("member %q appears more than once in one object", Clip(string(name)))}
}

func syntaxError(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) && strings.Contains(se.Error(), "unexpected end") {
		return &DecodeError{Reason: "the JSON ends early"}
	}
	return &DecodeError{Reason: "the body is not valid JSON: " + err.Error()}
}

// Bytes is binary data, carried as base64url without padding. Decoding
// ignores white space (space, tab, CR, LF) inside the string, because the
// example's formatter wraps long values; encoding never emits any.
type Bytes []byte

func (b Bytes) MarshalJSON() ([]byte, error) {
	return b.appendJSON(make([]byte, 0, base64.RawURLEncoding.EncodedLen(len(b))+2)), nil
}

func (b Bytes) appendJSON(dst []byte) []byte {
	dst = append(dst, '"')
	dst = base64.RawURLEncoding.AppendEncode(dst, b)
	return append(dst, '"')
}

func (b *Bytes) UnmarshalJSON(data []byte) error {
	var s string
	if plainString(data) {
		s = string(data[1 : len(data)-1])
	} else if err := json.Unmarshal(data, &s); err != nil {
		return &DecodeError{Reason: "a binary value is not a string"}
	}
	v, err := DecodeBase64(s)
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// strictBase64 refuses non-zero trailing bits, so each value has exactly one
// encoding: otherwise "…PEwA" and "…PEwB" would be the same Domain.
var strictBase64 = base64.RawURLEncoding.Strict()

// DecodeBase64 decodes unpadded base64url, ignoring white space.
func DecodeBase64(s string) ([]byte, error) {
	if strings.ContainsAny(s, " \t\r\n") {
		s = strings.Map(func(r rune) rune {
			switch r {
			case ' ', '\t', '\r', '\n':
				return -1
			}
			return r
		}, s)
	}
	v, err := strictBase64.DecodeString(s)
	if err != nil {
		return nil, &DecodeError{Reason: "a binary value is not canonical unpadded base64url"}
	}
	return v, nil
}

// Clip shortens a string a peer sent before an error message echoes it.
func Clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
