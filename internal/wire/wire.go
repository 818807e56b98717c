// Package wire holds the jwcexchange message types and their JSON encoding,
// byte-compatible with the 2017 example: objects tagged by their type name,
// binary values in base64url without padding, public values in .NET's
// little-endian two's-complement form.
//
// Decoding is strict where the protocol needs it to be: a member name that
// appears twice in one object (compared without regard to case, because
// encoding/json matches names that way) is refused rather than resolved, as
// is nesting deeper than any message needs.
package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Suite is one offered combination of algorithms.
type Suite struct {
	Encryption     []string `json:"Encryption"`
	Authentication []string `json:"Authentication"`
}

// PublicKey is a PublicKeyDH object. It always appears on the wire inside its
// tag: {"PublicKeyDH": {...}}.
type PublicKey struct {
	KID    string `json:"kid"`
	Domain Bytes  `json:"Domain"`
	Public Bytes  `json:"Public"`
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

// ServiceDescription is the discovery document.
type ServiceDescription struct {
	ServerCredential *PublicKey `json:"ServerCredential"`
	Domain           Bytes      `json:"Domain"`
	Encryption       []string   `json:"Encryption"`
	Authentication   []string   `json:"Authentication"`
}

// Tags, as they appear on the wire.
const (
	tagPublicKey   = "PublicKeyDH"
	tagRequest     = "ExchangeRequest"
	tagResponse    = "ExchangeResponse"
	tagDescription = "ServiceDescription"
)

// Each tagged type marshals through a plain twin to avoid recursing into its
// own MarshalJSON.
type (
	plainPublicKey   PublicKey
	plainRequest     ExchangeRequest
	plainResponse    ExchangeResponse
	plainDescription ServiceDescription
)

func (k PublicKey) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]plainPublicKey{tagPublicKey: plainPublicKey(k)})
}
func (m ExchangeRequest) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]plainRequest{tagRequest: plainRequest(m)})
}
func (m ExchangeResponse) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]plainResponse{tagResponse: plainResponse(m)})
}
func (m ServiceDescription) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]plainDescription{tagDescription: plainDescription(m)})
}

func (k *PublicKey) UnmarshalJSON(b []byte) error {
	return untag(b, tagPublicKey, (*plainPublicKey)(k))
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

// untag decodes {tag: value} into v. Other members beside the tag are ignored.
func untag(b []byte, tag string, v any) error {
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(b, &outer); err != nil || outer == nil {
		return &DecodeError{Reason: fmt.Sprintf("expected an object tagged %q", tag)}
	}
	inner, ok := outer[tag]
	if !ok {
		return &DecodeError{Reason: fmt.Sprintf("expected an object tagged %q", tag)}
	}
	if len(inner) == 0 || inner[0] != '{' {
		return &DecodeError{Reason: fmt.Sprintf("the %s member is not an object", tag)}
	}
	return json.Unmarshal(inner, v)
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
	if err := json.Unmarshal(data, v); err != nil {
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

// checkStructure refuses duplicate member names (compared without case, as
// encoding/json matches them) and nesting deeper than MaxDepth. Valid JSON
// is scanned byte by byte, which is several times faster than walking it
// with json.Decoder.Token; invalid JSON takes the walk, for its error.
func checkStructure(data []byte) error {
	if !json.Valid(data) {
		return walkStructure(data)
	}
	type frame struct {
		object bool
		names  map[string]struct{}
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
				top := &stack[len(stack)-1]
				name := string(data[i+1 : j])
				if bytes.IndexByte(data[i:j], '\\') >= 0 {
					json.Unmarshal(data[i:j+1], &name)
				}
				folded := strings.ToLower(name)
				if _, dup := top.names[folded]; dup {
					return &DecodeError{Reason: fmt.Sprintf("member %q appears more than once in one object", name)}
				}
				if top.names == nil {
					top.names = map[string]struct{}{}
				}
				top.names[folded] = struct{}{}
				expectName = false
			}
			i = j
		}
	}
	return nil
}

func walkStructure(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := walk(dec, 0); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return &DecodeError{Reason: "unexpected data after the JSON value"}
	}
	return nil
}

func walk(dec *json.Decoder, depth int) error {
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err)
	}
	delim, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if depth++; depth > MaxDepth {
		return &DecodeError{Reason: fmt.Sprintf("the JSON is nested more than %d levels deep", MaxDepth)}
	}
	switch delim {
	case '{':
		seen := make(map[string]bool)
		for dec.More() {
			key, err := dec.Token()
			if err != nil {
				return syntaxError(err)
			}
			name := strings.ToLower(key.(string))
			if seen[name] {
				return &DecodeError{Reason: fmt.Sprintf("member %q appears more than once in one object", key)}
			}
			seen[name] = true
			if err := walk(dec, depth); err != nil {
				return err
			}
		}
	case '[':
		for dec.More() {
			if err := walk(dec, depth); err != nil {
				return err
			}
		}
	}
	if _, err := dec.Token(); err != nil { // the closing delimiter
		return syntaxError(err)
	}
	return nil
}

func syntaxError(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return &DecodeError{Reason: "the JSON ends early"}
	}
	return &DecodeError{Reason: "the body is not valid JSON: " + err.Error()}
}

// Bytes is binary data, carried as base64url without padding. Decoding
// ignores white space (space, tab, CR, LF) inside the string, because the
// example's formatter wraps long values; encoding never emits any.
type Bytes []byte

func (b Bytes) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, base64.RawURLEncoding.EncodedLen(len(b))+2)
	out = append(out, '"')
	out = base64.RawURLEncoding.AppendEncode(out, b)
	return append(out, '"'), nil
}

func (b *Bytes) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
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
