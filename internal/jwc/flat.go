package jwc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/custos-kx/custos/internal/wire"
)

// A flat object is a JSON object whose members are strings and integers:
// the shape of a JWS header and of the claims of a request or response.
// Every authenticated request decodes two of them on each side, so they
// get a decoder of their own — no reflection, no second pass — that is as
// strict as wire.Unmarshal: a duplicate name (exact, SPEC §2) is
// refused, and so is anything that is not one object of string and integer
// members. A differential fuzz test holds it to encoding/json.

// flatValue is one member's value.
type flatValue struct {
	raw    []byte // the JSON token
	isText bool
}

// Text stores the value in *s if it is a string.
func (v flatValue) Text(s *string) error {
	if !v.isText {
		return fmt.Errorf("is %s, not a string", kind(v.raw))
	}
	inner := v.raw[1 : len(v.raw)-1]
	if strings.IndexByte(string(inner), '\\') < 0 && isPlainASCII(inner) {
		*s = string(inner)
		return nil
	}
	return json.Unmarshal(v.raw, s) // escapes, and invalid UTF-8 replaced as encoding/json does
}

// Int stores the value in *n if it is an integer that fits.
func (v flatValue) Int(n *int64) error {
	if v.isText {
		return fmt.Errorf("is a string, not an integer")
	}
	i, err := strconv.ParseInt(string(v.raw), 10, 64)
	if err != nil {
		return fmt.Errorf("is not an integer that fits in 64 bits")
	}
	*n = i
	return nil
}

func kind(raw []byte) string {
	switch raw[0] {
	case '"':
		return "a string"
	default:
		return "a number"
	}
}

// decodeFlat decodes a flat object, calling member for each member in
// order with the member's name (unescaped; valid only during the call). An
// error from member stops decoding and is returned with the member's name.
func decodeFlat(data []byte, member func(name []byte, v flatValue) error) error {
	d := flatDecoder{data: data}
	d.space()
	if !d.take('{') {
		return &wire.DecodeError{Reason: "not a JSON object"}
	}
	var names wire.Members // flat objects are small: the names stay where they lie
	d.space()
	if d.take('}') {
		return d.end()
	}
	for {
		d.space()
		nameTok, err := d.str()
		if err != nil {
			return err
		}
		name := nameTok[1 : len(nameTok)-1]
		if bytes.IndexByte(name, '\\') >= 0 || !isPlainASCII(name) {
			var s string
			if err := (flatValue{raw: nameTok, isText: true}).Text(&s); err != nil {
				return &wire.DecodeError{Reason: "a member name is not a valid string"}
			}
			name = []byte(s)
		}
		if err := names.Add(name); err != nil {
			return err
		}
		d.space()
		if !d.take(':') {
			return &wire.DecodeError{Reason: "expected ':' after a member name"}
		}
		d.space()
		var v flatValue
		switch {
		case d.peek() == '"':
			tok, err := d.str()
			if err != nil {
				return err
			}
			v = flatValue{raw: tok, isText: true}
		case d.peek() == '-' || (d.peek() >= '0' && d.peek() <= '9'):
			tok, err := d.integer()
			if err != nil {
				return err
			}
			v = flatValue{raw: tok}
		default:
			return &wire.DecodeError{Reason: fmt.Sprintf("member %q must be a string or an integer", name)}
		}
		if err := member(name, v); err != nil {
			return &wire.DecodeError{Reason: fmt.Sprintf("member %q %v", name, err)}
		}
		d.space()
		if d.take('}') {
			return d.end()
		}
		if !d.take(',') {
			return &wire.DecodeError{Reason: "expected ',' or '}' after a member"}
		}
	}
}

type flatDecoder struct {
	data []byte
	i    int
}

func (d *flatDecoder) peek() byte {
	if d.i < len(d.data) {
		return d.data[d.i]
	}
	return 0
}

func (d *flatDecoder) take(c byte) bool {
	if d.peek() == c && d.i < len(d.data) {
		d.i++
		return true
	}
	return false
}

func (d *flatDecoder) space() {
	for d.i < len(d.data) {
		switch d.data[d.i] {
		case ' ', '\t', '\r', '\n':
			d.i++
		default:
			return
		}
	}
}

func (d *flatDecoder) end() error {
	d.space()
	if d.i != len(d.data) {
		return &wire.DecodeError{Reason: "unexpected data after the JSON object"}
	}
	return nil
}

// str returns the string token at the cursor, quotes included, after
// checking it is valid JSON (control characters, escapes, UTF-8).
func (d *flatDecoder) str() ([]byte, error) {
	start := d.i
	if !d.take('"') {
		return nil, &wire.DecodeError{Reason: "expected a string"}
	}
	escaped := false
	for d.i < len(d.data) {
		c := d.data[d.i]
		d.i++
		switch {
		case c == '\\':
			escaped = true
			d.i++ // the escaped character; validity is checked below
		case c == '"':
			tok := d.data[start:d.i]
			if escaped || !isPlainASCII(tok) {
				if !json.Valid(tok) {
					return nil, &wire.DecodeError{Reason: "a string is not valid JSON"}
				}
			}
			return tok, nil
		case c < 0x20:
			return nil, &wire.DecodeError{Reason: "a string holds a control character"}
		}
	}
	return nil, &wire.DecodeError{Reason: "the JSON ends inside a string"}
}

func isPlainASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// integer returns the integer token at the cursor: -?(0|[1-9][0-9]*).
func (d *flatDecoder) integer() ([]byte, error) {
	start := d.i
	d.take('-')
	switch c := d.peek(); {
	case c == '0':
		d.i++
	case c >= '1' && c <= '9':
		for c := d.peek(); c >= '0' && c <= '9'; c = d.peek() {
			d.i++
		}
	default:
		return nil, &wire.DecodeError{Reason: "a number is malformed"}
	}
	if c := d.peek(); c == '.' || c == 'e' || c == 'E' || (c >= '0' && c <= '9') {
		return nil, &wire.DecodeError{Reason: "a number is not an integer in canonical form"}
	}
	return d.data[start:d.i], nil
}
