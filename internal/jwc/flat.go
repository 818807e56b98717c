package jwc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/custos-kx/custos/internal/wire"
)

// A flat object is a JSON object whose members are strings, integers and
// arrays of strings: the shape of a JWS header and of the claims of a
// request or response.
// Every authenticated request decodes two of them on each side, so they
// get a decoder of their own — no reflection, no second pass — that is as
// strict as wire.Unmarshal: a duplicate name (exact, SPEC §2) is
// refused, and so is anything that is not one object of string, integer
// and string-array members. A differential fuzz test holds it to
// encoding/json.

// flatValue is one member's value.
type flatValue struct {
	raw  []byte // the JSON token, or the whole array
	kind byte   // '"' a string, '0' an integer, '[' an array of strings
}

// Text stores the value in *s if it is a string.
func (v flatValue) Text(s *string) error {
	if v.kind != '"' {
		return fmt.Errorf("is %s, not a string", v.what())
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
	if v.kind != '0' {
		return fmt.Errorf("is %s, not an integer", v.what())
	}
	i, err := strconv.ParseInt(string(v.raw), 10, 64)
	if err != nil {
		return fmt.Errorf("is not an integer that fits in 64 bits")
	}
	*n = i
	return nil
}

// Strings stores the value in *out if it is an array of strings; an empty
// array gives an empty, non-nil slice.
func (v flatValue) Strings(out *[]string) error {
	if v.kind != '[' {
		return fmt.Errorf("is %s, not an array of strings", v.what())
	}
	list := []string{}
	d := flatDecoder{data: v.raw[1 : len(v.raw)-1]} // checked by array()
	for d.space(); d.i < len(d.data); d.space() {
		tok, _ := d.str()
		var s string
		if err := (flatValue{raw: tok, kind: '"'}).Text(&s); err != nil {
			return err
		}
		list = append(list, s)
		d.space()
		d.take(',')
	}
	*out = list
	return nil
}

func (v flatValue) what() string {
	switch v.kind {
	case '"':
		return "a string"
	case '[':
		return "an array"
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
			if err := (flatValue{raw: nameTok, kind: '"'}).Text(&s); err != nil {
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
			v = flatValue{raw: tok, kind: '"'}
		case d.peek() == '-' || (d.peek() >= '0' && d.peek() <= '9'):
			tok, err := d.integer()
			if err != nil {
				return err
			}
			v = flatValue{raw: tok, kind: '0'}
		case d.peek() == '[':
			tok, err := d.array()
			if err != nil {
				return err
			}
			v = flatValue{raw: tok, kind: '['}
		default:
			return &wire.DecodeError{Reason: fmt.Sprintf("member %q must be a string, an integer or an array of strings", name)}
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
	// Nearly every string of a token is plain printable ASCII (hashes,
	// ids, names): find its end with the vectorised IndexByte and check
	// its bytes in one pass. Anything else takes the careful loop.
	if n := bytes.IndexByte(d.data[d.i:], '"'); n >= 0 && plainPrintable(d.data[d.i:d.i+n]) {
		d.i += n + 1
		return d.data[start:d.i], nil
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

// plainPrintable reports whether b is printable ASCII without a backslash:
// a JSON string body that needs no unescaping and no validation.
func plainPrintable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c >= 0x80 || c == '\\' {
			return false
		}
	}
	return true
}

func isPlainASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// array returns the array of strings at the cursor, brackets included.
func (d *flatDecoder) array() ([]byte, error) {
	start := d.i
	d.take('[')
	d.space()
	if d.take(']') {
		return d.data[start:d.i], nil
	}
	for {
		d.space()
		if _, err := d.str(); err != nil {
			return nil, &wire.DecodeError{Reason: "an array holds something other than strings"}
		}
		d.space()
		if d.take(']') {
			return d.data[start:d.i], nil
		}
		if !d.take(',') {
			return nil, &wire.DecodeError{Reason: "expected ',' or ']' in an array"}
		}
	}
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
