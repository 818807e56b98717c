package wire

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestMemberNamesAreExact(t *testing.T) {
	for _, tc := range []struct {
		in        string
		nonce     bool // ClientNonce decoded
		refused   bool
		credIsNil bool
	}{
		{in: `{"ExchangeRequest":{"ClientNonce":{"PublicKeyDH":{"kid":"K","Domain":"AA","Public":"AQ"}}}}`, nonce: true, credIsNil: true},
		// Another case is another, unknown, member: ignored, not matched.
		{in: `{"ExchangeRequest":{"clientNonce":{"PublicKeyDH":{"kid":"K","Domain":"AA","Public":"AQ"}}}}`, credIsNil: true},
		{in: `{"ExchangeRequest":{"clientcredential":{"PublicKeyDH":{"kid":"K","Domain":"AA","Public":"AQ"}}}}`, credIsNil: true},
		// Two different names are not duplicates; the same name twice is.
		{in: `{"ExchangeRequest":{"ClientNonce":null,"clientnonce":null}}`, credIsNil: true},
		{in: `{"ExchangeRequest":{"ClientNonce":null,"ClientNonce":null}}`, refused: true},
		{in: `{"ExchangeRequest":{"ClientNonce":null,"Client\u004eonce":null}}`, refused: true},
	} {
		var m ExchangeRequest
		err := Unmarshal([]byte(tc.in), &m)
		if (err != nil) != tc.refused {
			t.Errorf("%s: err %v", tc.in, err)
			continue
		}
		if tc.refused {
			continue
		}
		if (m.ClientNonce != nil) != tc.nonce || (m.ClientCredential == nil) != tc.credIsNil {
			t.Errorf("%s: decoded %+v", tc.in, m)
		}
	}
	var resp ExchangeResponse
	if err := Unmarshal([]byte(`{"ExchangeResponse":{"ſtatus":201,"Status":400}}`), &resp); err != nil || resp.Status != 400 {
		t.Fatalf("ſtatus is not Status: %+v %v", resp, err)
	}
}

func TestMembersManyNames(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{`)
	for i := range 100 {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"m` + strings.Repeat("x", i) + `":0`)
	}
	if err := checkStructure([]byte(b.String() + `}`)); err != nil {
		t.Fatal(err)
	}
	if err := checkStructure([]byte(b.String() + `,"mxx":1}`)); err == nil {
		t.Fatal("a duplicate after the first eight names was not refused")
	}
}

func TestCanonicalBase64(t *testing.T) {
	for in, ok := range map[string]bool{"AQ": true, "AR": false, "AQ==": false, "A+": false, "A Q": true} {
		if _, err := DecodeBase64(in); (err == nil) != ok {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// FuzzSplitObject holds splitObject to encoding/json: for every valid
// JSON value, the members it finds are those a map[string]json.RawMessage
// gets, and it refuses exactly the values that are not objects.
func FuzzSplitObject(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { "a" : 1 , "b":[1,{"c":"}"}], "d\"e":"x\\"}`, `{"a":{"b":{}},"c":null,"d":true,"e":-1.5e3}`,
		`[1]`, `null`, `"s"`, `{"k\u0069d":"v","kid":"w"}`, `{"a":"\u00e9","ſ":""}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		ms, ok := splitObject(b)
		var want map[string]json.RawMessage
		err := json.Unmarshal(b, &want)
		if isObject := err == nil && want != nil; ok != isObject {
			t.Fatalf("%q: splitObject says object %v, encoding/json %v", b, ok, isObject)
		}
		if !ok {
			return
		}
		got := map[string]json.RawMessage{}
		for _, m := range ms {
			got[m.name] = m.raw
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d members, encoding/json %d", b, len(got), len(want))
		}
		for name, raw := range want {
			if !bytes.Equal(got[name], raw) {
				t.Fatalf("%q: member %q = %q, encoding/json %q", b, name, got[name], raw)
			}
		}
	})
}

// referenceJSON encodes a response with encoding/json alone, through
// structs with the types' tags: what the hand-written MarshalJSON replaces.
func referenceJSON(t *testing.T, m *ExchangeResponse) []byte {
	t.Helper()
	type refKey struct {
		DH *dhMembers   `json:"PublicKeyDH,omitempty"`
		EC *ecdhMembers `json:"PublicKeyECDH,omitempty"`
	}
	key := func(k *PublicKey) *refKey {
		switch {
		case k == nil:
			return nil
		case k.Type == KeyECDH:
			return &refKey{EC: &ecdhMembers{KID: k.KID, Curve: &k.Curve, Public: k.Public}}
		}
		return &refKey{DH: &dhMembers{KID: k.KID, Domain: k.Domain, Public: k.Public}}
	}
	type refResponse struct {
		Status            int      `json:"Status"`
		StatusDescription string   `json:"StatusDescription"`
		Error             string   `json:"Error,omitempty"`
		Ticket            Bytes    `json:"Ticket,omitempty"`
		Witness           Bytes    `json:"Witness,omitempty"`
		ServerCredential  *refKey  `json:"ServerCredential,omitempty"`
		ServerNonce       *refKey  `json:"ServerNonce,omitempty"`
		Encryption        []string `json:"Encryption,omitempty"`
		Authentication    []string `json:"Authentication,omitempty"`
	}
	b, err := json.Marshal(struct {
		V refResponse `json:"ExchangeResponse"`
	}{refResponse{m.Status, m.StatusDescription, m.Error, m.Ticket, m.Witness, key(m.ServerCredential), key(m.ServerNonce), m.Encryption, m.Authentication}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzMarshalMatchesEncodingJSON: the hand-written response encoding is
// byte for byte encoding/json's, whatever the strings hold.
func FuzzMarshalMatchesEncodingJSON(f *testing.F) {
	f.Add(201, "Operation completed successfully", "", "kid", "P-256", []byte{1, 2, 3}, true, true)
	f.Add(422, "The <key> & \"its\" kid\u2028\x00\xff", "KidMismatch", "", "", []byte(nil), false, false)
	f.Fuzz(func(t *testing.T, status int, desc, code, kid, crv string, bin []byte, ec, full bool) {
		typ := KeyDH
		if ec {
			typ = KeyECDH
		}
		m := &ExchangeResponse{Status: status, StatusDescription: desc, Error: code}
		if full {
			m.Ticket, m.Witness = bin, append(Bytes{9}, bin...)
			m.ServerCredential = &PublicKey{Type: typ, KID: kid, Curve: crv, Domain: bin, Public: bin}
			m.ServerNonce = &PublicKey{Type: KeyDH, KID: desc, Public: bin}
			m.Encryption, m.Authentication = []string{code, desc}, []string{kid}
		}
		got, _ := json.Marshal(m)
		if want := referenceJSON(t, m); !bytes.Equal(got, want) {
			t.Fatalf("got  %s\nwant %s", got, want)
		}
	})
}
