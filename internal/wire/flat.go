package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// A flat object is a JSON object whose members are strings and integers:
// the shape of a JWS header and of the claims of a request or response.
// Every authenticated request decodes two of them on each side, so they
// get a decoder of their own — no reflection, no second pass — that is as
// strict as Unmarshal: duplicate names (compared without case) are
// refused, and so is anything that is not one object of string and integer
// members. A differential fuzz test holds it to encoding/json.

// FlatValue is one member's value.
type FlatValue struct {
	raw    []byte // the JSON token
	isText bool
}

// Text stores the value in *s if it is a string.
func (v FlatValue) Text(s *string) error {
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
func (v FlatValue) Int(n *int64) error {
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

// DecodeFlat decodes a flat object, calling member for each member in
// order with the member's name (unescaped; valid only during the call). An
// error from member stops decoding and is returned with the member's name.
func DecodeFlat(data []byte, member func(name []byte, v FlatValue) error) error {
	d := flatDecoder{data: data}
	d.space()
	if !d.take('{') {
		return &DecodeError{Reason: "not a JSON object"}
	}
	// Flat objects are small: the names seen stay on the stack, and plain
	// names (nearly all) are compared where they lie in data.
	var seenArray [8][]byte
	seen := seenArray[:0]
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
			if err := (FlatValue{raw: nameTok, isText: true}).Text(&s); err != nil {
				return &DecodeError{Reason: "a member name is not a valid string"}
			}
			name = []byte(s)
		}
		for _, s := range seen {
			if sameName(s, name) {
				return &DecodeError{Reason: fmt.Sprintf("member %q appears more than once", name)}
			}
		}
		seen = append(seen, name)
		d.space()
		if !d.take(':') {
			return &DecodeError{Reason: "expected ':' after a member name"}
		}
		d.space()
		var v FlatValue
		switch {
		case d.peek() == '"':
			tok, err := d.str()
			if err != nil {
				return err
			}
			v = FlatValue{raw: tok, isText: true}
		case d.peek() == '-' || (d.peek() >= '0' && d.peek() <= '9'):
			tok, err := d.integer()
			if err != nil {
				return err
			}
			v = FlatValue{raw: tok}
		default:
			return &DecodeError{Reason: fmt.Sprintf("member %q must be a string or an integer", name)}
		}
		if err := member(name, v); err != nil {
			return &DecodeError{Reason: fmt.Sprintf("member %q %v", name, err)}
		}
		d.space()
		if d.take('}') {
			return d.end()
		}
		if !d.take(',') {
			return &DecodeError{Reason: "expected ',' or '}' after a member"}
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
		return &DecodeError{Reason: "unexpected data after the JSON object"}
	}
	return nil
}

// str returns the string token at the cursor, quotes included, after
// checking it is valid JSON (control characters, escapes, UTF-8).
func (d *flatDecoder) str() ([]byte, error) {
	start := d.i
	if !d.take('"') {
		return nil, &DecodeError{Reason: "expected a string"}
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
					return nil, &DecodeError{Reason: "a string is not valid JSON"}
				}
			}
			return tok, nil
		case c < 0x20:
			return nil, &DecodeError{Reason: "a string holds a control character"}
		}
	}
	return nil, &DecodeError{Reason: "the JSON ends inside a string"}
}

// sameName reports whether two member names are the same but for case, as
// encoding/json would match both to one field.
func sameName(a, b []byte) bool {
	if isPlainASCII(a) && isPlainASCII(b) {
		return bytes.EqualFold(a, b)
	}
	return strings.ToLower(string(a)) == strings.ToLower(string(b))
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
		return nil, &DecodeError{Reason: "a number is malformed"}
	}
	if c := d.peek(); c == '.' || c == 'e' || c == 'E' || (c >= '0' && c <= '9') {
		return nil, &DecodeError{Reason: "a number is not an integer in canonical form"}
	}
	return d.data[start:d.i], nil
}
