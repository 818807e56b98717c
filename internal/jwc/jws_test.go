package jwc

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestEncodingIsEncodingJSON: headers and claims are written by hand on
// the hot path; they must be exactly what encoding/json writes, so that
// what the service and other JOSE libraries sign and check is unchanged.
func TestEncodingIsEncodingJSON(t *testing.T) {
	strs := []string{"", "GET", "/v1/whoami?x=1&y=2", `quote"back\slash`, "<b>", "tab\tnl\n\x00\x1f\x7f",
		"é ünïcode ✓", "\u2028\u2029", "bad utf8 \xff\xfe", strings.Repeat("a", 300)}
	for _, s := range strs {
		c := &Claims{Method: s, Target: s, IssuedAt: -1 << 62, ID: s, BodyHash: s, Headers: []string{s, "content-type"}, HeaderHash: s, Encryption: s}
		want, _ := json.Marshal(c)
		if got := c.appendJSON(nil); string(got) != string(want) {
			t.Errorf("claims with %q:\n got %s\nwant %s", s, got, want)
		}
		rc := &ResponseClaims{ID: s, Method: s, Target: s, Status: 599, BodyHash: s, Headers: []string{}, HeaderHash: s, Encryption: s}
		want, _ = json.Marshal(rc)
		if got := rc.appendJSON(nil); string(got) != string(want) {
			t.Errorf("response claims with %q:\n got %s\nwant %s", s, got, want)
		}
		for _, h := range []header{{Alg: alg, Kid: s, Typ: TypeRequest}, {Alg: s, Typ: s}} {
			want, _ = json.Marshal(h)
			if got := h.encode(); got != base64.RawURLEncoding.EncodeToString(want) {
				t.Errorf("header %+v: got %s, want %s", h, got, want)
			}
		}
	}
}

// TestParseKnown: the service's path for a header it recognises gives the
// same claims as a full parse and refuses the same tampering.
func TestParseKnown(t *testing.T) {
	c := claims()
	tok, _ := SignOnce(ak, tkt, TypeRequest, c)
	if HeaderPart(tok) != Header(tkt, TypeRequest) {
		t.Fatalf("HeaderPart %q", HeaderPart(tok))
	}
	r, err := ParseKnown(tok, TypeRequest)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.Verify(akm); err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("%+v %v", got, err)
	}
	parts := strings.Split(tok, ".")
	for i := 1; i < 3; i++ {
		bad := append([]string(nil), parts...)
		b := []byte(bad[i])
		b[len(b)/2] ^= 0x01
		bad[i] = string(b)
		if r, err := ParseKnown(strings.Join(bad, "."), TypeRequest); err == nil {
			if _, err := r.Verify(akm); err == nil {
				t.Errorf("part %d tampered: verified", i)
			}
		}
	}
	for _, bad := range []string{"", "a.b", "a.b.c.d", parts[0] + "." + parts[1] + "\n." + parts[2], parts[0] + "." + parts[1] + ".AA"} {
		if _, err := ParseKnown(bad, TypeRequest); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
