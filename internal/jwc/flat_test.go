package jwc

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/custos-kx/custos/internal/wire"
)

type flatMember struct {
	text  string
	num   string
	isNum bool
	list  []string
	isArr bool
}

func decodeFlatAll(data []byte) (map[string]flatMember, error) {
	out := map[string]flatMember{}
	err := decodeFlat(data, func(name []byte, v flatValue) error {
		if v.kind == '[' {
			var l []string
			if err := v.Strings(&l); err != nil {
				return err
			}
			out[string(name)] = flatMember{list: l, isArr: true}
			return nil
		}
		if v.kind == '"' {
			var s string
			if err := v.Text(&s); err != nil {
				return err
			}
			out[string(name)] = flatMember{text: s}
			return nil
		}
		out[string(name)] = flatMember{num: string(v.raw), isNum: true}
		return nil
	})
	return out, err
}

func TestDecodeFlat(t *testing.T) {
	good := map[string]string{
		`{"alg":"HS512","kid":"abc","typ":"jwc-req"}`: "alg",
		` { "iat" : -12 , "htu":"/a?b=\u00e9\n" } `:   "iat",
		`{}`: "",
		// Names are exact (SPEC §2): these are two members, and ſ is not s.
		`{"a":"b","A":"c"}`: "a",
		`{"sts":1,"ſts":2}`: "sts",
	}
	for in := range good {
		if _, err := decodeFlatAll([]byte(in)); err != nil {
			t.Errorf("%s: %v", in, err)
		}
	}
	bad := []string{
		``, `[]`, `"x"`, `{`, `{"a":"b"`, `{"a":"b",}`, `{"a":"b"}x`, `{"a":"b"}{}`,
		`{"a":"b","a":"c"}`, `{"a":"b","\u0061":"c"}`, `{"a":1.5}`, `{"a":1e3}`, `{"a":01}`,
		`{"a":true}`, `{"a":null}`, `{"a":{}}`, `{"a":[1]}`, `{"a":["b",]}`, `{"a":["b"`, `{"a":[["b"]]}`, `{"a":"\x01"}`, `{"a":"\q"}`,
		`{a:"b"}`, `{"a" "b"}`, `{"a":-}`, `{"a":"b"` + "\x00}",
	}
	for _, in := range bad {
		if _, err := decodeFlatAll([]byte(in)); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

var canonicalInt = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)

// FuzzDecodeFlat holds decodeFlat to encoding/json: what it accepts,
// encoding/json accepts with the same members and values; and every object
// of string and integer members without duplicate names that encoding/json
// accepts, it accepts.
func FuzzDecodeFlat(f *testing.F) {
	for _, s := range []string{
		`{"alg":"HS512","kid":"abc","typ":"jwc-req"}`,
		`{"htm":"GET","htu":"/v1/whoami","iat":1700000000,"jti":"x","bdh":"y"}`,
		`{"jti":"a","sts":200,"bdh":"b"}`, `{"hds":["content-type","x-a"],"hdh":"h"}`, `{"hds":[]}`, `{"a":"\ud83d\ude00\"\\\/"}`, `{"a":"b","A":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ours, err := decodeFlatAll(data)
		if err == nil {
			var m map[string]json.RawMessage
			if werr := wire.Unmarshal(data, &m); werr != nil {
				t.Fatalf("decodeFlat accepted %q, which wire.Unmarshal refuses: %v", data, werr)
			}
		}
		var theirs map[string]any
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		jerr := dec.Decode(&theirs)
		if jerr == nil && dec.More() {
			jerr = errFlatTrailing
		}
		if err == nil {
			if jerr != nil || theirs == nil {
				t.Fatalf("accepted %q, which encoding/json refuses: %v", data, jerr)
			}
			if len(theirs) != len(ours) {
				t.Fatalf("%q: %d members, encoding/json sees %d", data, len(ours), len(theirs))
			}
			for k, v := range ours {
				switch tv := theirs[k].(type) {
				case string:
					if v.isNum || v.isArr || v.text != tv {
						t.Fatalf("%q: member %q is %+v, encoding/json says %q", data, k, v, tv)
					}
				case []any:
					if !v.isArr || len(v.list) != len(tv) {
						t.Fatalf("%q: member %q is %+v, encoding/json says %v", data, k, v, tv)
					}
					for i := range tv {
						if tv[i] != v.list[i] {
							t.Fatalf("%q: member %q element %d is %q, encoding/json says %v", data, k, i, v.list[i], tv[i])
						}
					}
				case json.Number:
					if !v.isNum || v.num != string(tv) {
						t.Fatalf("%q: member %q is %+v, encoding/json says %s", data, k, v, tv)
					}
				default:
					t.Fatalf("%q: member %q is %T for encoding/json", data, k, tv)
				}
			}
			return
		}
		if jerr != nil || theirs == nil || !json.Valid(data) {
			return
		}
		for _, v := range theirs {
			switch tv := v.(type) {
			case string:
			case []any:
				for _, e := range tv {
					if _, ok := e.(string); !ok {
						return
					}
				}
			case json.Number:
				if !canonicalInt.MatchString(string(tv)) {
					return
				}
			default:
				return
			}
		}
		if strings.Count(string(data), ":") != len(theirs) {
			return // encoding/json keeps the last of duplicate names
		}
		t.Fatalf("refused %q (%v), which is a flat object encoding/json accepts", data, err)
	})
}

var errFlatTrailing = &wire.DecodeError{Reason: "trailing"}
