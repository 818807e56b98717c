package jwc

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

var (
	ak  = bytes.Repeat([]byte{1}, 64)
	ek  = bytes.Repeat([]byte{2}, 64)
	tkt = []byte("\x01sealed tkt bytes")
	akm = NewMACKey(ak, Header(tkt, TypeRequest))
	ekm = NewMACKey(ek, Header(tkt, TypeRequest))
)

func claims() *Claims {
	return &Claims{Method: "POST", Target: "/v1/echo?x=1", IssuedAt: 1700000000, ID: NewID(), BodyHash: BodyHash([]byte("body")),
		Headers: []string{"content-type"}, HeaderHash: "hdh"}
}

func TestRoundTrip(t *testing.T) {
	c := claims()
	tok, err := SignOnce(ak, tkt, TypeRequest, c)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Ticket, tkt) || r.Type != TypeRequest {
		t.Fatalf("parsed tkt %q type %q", r.Ticket, r.Type)
	}
	got, err := r.Verify(akm)
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("verify: %+v %v", got, err)
	}
	if _, err := r.Verify(ekm); err == nil {
		t.Fatal("verified under the wrong key")
	}
}

// forge builds a compact JWS by hand, with any header, payload and HMAC-SHA256/512 key.
func forge(header, payload string, mac []byte) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	return signing + "." + enc.EncodeToString(mac)
}

func TestRefusals(t *testing.T) {
	kid := base64.RawURLEncoding.EncodeToString(tkt)
	payload, _ := json.Marshal(claims())
	good, _ := SignOnce(ak, tkt, TypeRequest, claims())
	h256 := hmac.New(sha256.New, ak)
	cases := map[string]string{
		"alg none":  forge(`{"alg":"none","kid":"`+kid+`","typ":"jwc-req"}`, string(payload), nil),
		"alg HS256": forge(`{"alg":"HS256","kid":"`+kid+`","typ":"jwc-req"}`, string(payload), h256.Sum(nil)),
		"wrong typ": func() string { s, _ := SignOnce(ak, tkt, "JWT", claims()); return s }(),
		"no kid":    forge(`{"alg":"HS512","typ":"jwc-req"}`, string(payload), make([]byte, 64)),
		"garbage":   "not.a.jws",
		"empty":     "",
		"huge":      strings.Repeat("a", MaxTokenSize+1),
		"json form": `{"payload":"e30","signatures":[]}`,
	}
	for name, tok := range cases {
		if _, err := Parse(tok); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	parts := strings.Split(good, ".")
	for i := range parts {
		bad := append([]string(nil), parts...)
		b := []byte(bad[i])
		b[len(b)/2] ^= 0x01
		bad[i] = string(b)
		if r, err := Parse(strings.Join(bad, ".")); err == nil {
			if _, err := r.Verify(akm); err == nil {
				t.Errorf("part %d tampered: verified", i)
			}
		}
	}
	// Unknown claims are refused, not ignored.
	extra := `{"htm":"GET","htu":"/","iat":1,"jti":"a","bdh":"b","admin":true}`
	r, err := Parse(forgeHS512(`{"alg":"HS512","kid":"`+kid+`","typ":"jwc-req"}`, extra))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Verify(akm); err == nil {
		t.Error("unknown claim accepted")
	}
}

func forgeHS512(header, payload string) string {
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(header)) + "." + enc.EncodeToString([]byte(payload))
	m := hmac.New(sha512.New, ak)
	m.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(m.Sum(nil))
}

func TestResponseSignature(t *testing.T) {
	rc := &ResponseClaims{ID: "abc", Method: "GET", Target: "/x", Status: 200, BodyHash: BodyHash([]byte("ok")), Headers: []string{}, HeaderHash: "hdh", Encryption: A256CBCHS512}
	sig, err := SignResponse(akm, rc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyResponse(akm, sig)
	if err != nil || !reflect.DeepEqual(got, rc) {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := VerifyResponse(ekm, sig); err == nil {
		t.Fatal("verified under the wrong key")
	}
	req, _ := SignOnce(ak, tkt, TypeRequest, claims())
	if _, err := VerifyResponse(akm, req); err == nil {
		t.Fatal("a request token passed as a response signature")
	}
}

func TestEncryption(t *testing.T) {
	ct, err := Encrypt(ek, tkt, []byte("secret body"), "text/plain; charset=utf-8")
	if err != nil {
		t.Fatal(err)
	}
	pt, cty, err := Decrypt(ek, tkt, ct)
	if err != nil || string(pt) != "secret body" || cty != "text/plain; charset=utf-8" {
		t.Fatalf("%q %q %v", pt, cty, err)
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(ct, ".")[0])
	if !strings.Contains(string(hdr), `"cty":"text/plain; charset=utf-8"`) {
		t.Fatalf("JWE header %s does not carry the plaintext's media type", hdr)
	}
	if _, _, err := Decrypt(ak, tkt, ct); err == nil {
		t.Error("decrypted under the wrong key")
	}
	if _, _, err := Decrypt(ek, []byte("another tkt"), ct); err == nil {
		t.Error("a JWE naming another session's tkt was accepted")
	}
	parts := strings.Split(ct, ".")
	for i := 2; i < 5; i++ { // IV, ciphertext, tag
		bad := append([]string(nil), parts...)
		b := []byte(bad[i])
		b[0] ^= 0x01
		bad[i] = string(b)
		if _, _, err := Decrypt(ek, tkt, strings.Join(bad, ".")); err == nil {
			t.Errorf("part %d tampered: decrypted", i)
		}
	}
}

// TestInteropWithGoJose checks the package's own JWS against go-jose's in
// both directions, so other implementations built on a JOSE library agree.
func TestInteropWithGoJose(t *testing.T) {
	c := claims()
	ours, err := SignOnce(ak, tkt, TypeRequest, c)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := jose.ParseSignedCompact(ours, []jose.SignatureAlgorithm{jose.HS512})
	if err != nil {
		t.Fatal(err)
	}
	payload, err := obj.Verify(ak)
	if err != nil {
		t.Fatalf("go-jose does not verify our token: %v", err)
	}
	want, _ := json.Marshal(c)
	if !bytes.Equal(payload, want) || obj.Signatures[0].Protected.KeyID != base64.RawURLEncoding.EncodeToString(tkt) {
		t.Fatalf("go-jose read %s, kid %q", payload, obj.Signatures[0].Protected.KeyID)
	}

	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS512, Key: ak},
		(&jose.SignerOptions{}).WithType(TypeRequest).WithHeader(jose.HeaderKey("kid"), base64.RawURLEncoding.EncodeToString(tkt)))
	if err != nil {
		t.Fatal(err)
	}
	signed, err := signer.Sign(want)
	if err != nil {
		t.Fatal(err)
	}
	theirs, _ := signed.CompactSerialize()
	if theirs != ours {
		t.Errorf("go-jose serialises differently:\n%s\n%s", theirs, ours)
	}
	r, err := Parse(theirs)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.Verify(akm); err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("go-jose's token: %+v %v", got, err)
	}

	rc := &ResponseClaims{ID: "abc", Status: 201, BodyHash: BodyHash(nil)}
	sig, _ := SignResponse(akm, rc)
	robj, err := jose.ParseSignedCompact(sig, []jose.SignatureAlgorithm{jose.HS512})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := robj.Verify(ak); err != nil {
		t.Fatalf("go-jose does not verify our response signature: %v", err)
	}
}

func BenchmarkRequestToken(b *testing.B) {
	c := claims()
	// A ticket of the size the service seals (336 bytes), which makes the
	// header part most of the token.
	t := bytes.Repeat([]byte{7}, 336)
	s := NewSigner(ak, t, TypeRequest)
	akm := s.Key()
	b.Run("sign", func(b *testing.B) {
		for b.Loop() {
			s.Sign(c)
		}
	})
	tok, _ := s.Sign(c)
	b.Run("parse+verify", func(b *testing.B) {
		for b.Loop() {
			r, _ := Parse(tok)
			r.Verify(akm)
		}
	})
	b.Run("parse-known+verify", func(b *testing.B) {
		for b.Loop() {
			r, _ := ParseKnown(tok, TypeRequest)
			r.Verify(akm)
		}
	})
	rc := &ResponseClaims{ID: c.ID, Status: 200, BodyHash: BodyHash(nil)}
	b.Run("sign-response", func(b *testing.B) {
		for b.Loop() {
			SignResponse(akm, rc)
		}
	})
	sig, _ := SignResponse(akm, rc)
	b.Run("verify-response", func(b *testing.B) {
		for b.Loop() {
			VerifyResponse(akm, sig)
		}
	})
}

// FuzzRequestToken feeds arbitrary Authorization tokens and JWE bodies to
// the verifier. It must never panic, and a token must verify only under
// the key it was made with.
func FuzzRequestToken(f *testing.F) {
	good, _ := SignOnce(ak, tkt, TypeRequest, claims())
	f.Add(good, "")
	rekey, _ := SignOnce(ak, tkt, TypeRekey, claims())
	f.Add(rekey, "")
	enc, _ := Encrypt(ek, tkt, []byte(`{"a":1}`), "application/json")
	f.Add("", enc)
	f.Add("a.b.c", "a.b.c.d.e")
	f.Fuzz(func(t *testing.T, token, jwe string) {
		if r, err := Parse(token); err == nil {
			if len(r.Ticket) == 0 || (r.Type != TypeRequest && r.Type != TypeRekey) {
				t.Fatalf("parsed %q as ticket %x type %q", token, r.Ticket, r.Type)
			}
			if _, err := r.Verify(ekm); err == nil {
				t.Fatalf("%q verified under a key it was not made with", token)
			}
			r.Verify(akm)
		}
		if r, err := ParseKnown(token, TypeRequest); err == nil {
			if _, err := r.Verify(ekm); err == nil {
				t.Fatalf("%q verified under a key it was not made with", token)
			}
			r.Verify(akm)
		}
		VerifyResponse(akm, token)
		Decrypt(ek, tkt, jwe)
		Decrypt(ak, tkt, jwe)
	})
}
