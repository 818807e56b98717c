package jwc

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha512"
	"strings"
	"testing"
)

// TestMACKey checks the precomputed HMAC against crypto/hmac for keys
// shorter than, as long as, and longer than SHA-512's block, and for
// headers that end before, on and after a block boundary.
func TestMACKey(t *testing.T) {
	for _, n := range []int{0, 1, 32, 64, 127, 128, 129, 200, 300} {
		key := make([]byte, n)
		rand.Read(key)
		for _, hn := range []int{0, 1, 126, 127, 128, 651} {
			hdr := strings.Repeat("h", hn)
			k := NewMACKey(key, hdr)
			for _, m := range []int{0, 1, 111, 112, 128, 700, 5000} {
				msg := make([]byte, m)
				rand.Read(msg)
				want := hmac.New(sha512.New, key)
				want.Write(msg)
				got, ok := k.sum(msg)
				if !ok || !bytes.Equal(got[:], want.Sum(nil)) {
					t.Fatalf("key %d bytes, message %d bytes: HMAC differs from crypto/hmac", n, m)
				}
				want.Reset()
				want.Write([]byte(hdr + "."))
				want.Write(msg)
				got, ok = k.sumFrom(k.afterHeader, msg)
				if !ok || !bytes.Equal(got[:], want.Sum(nil)) {
					t.Fatalf("key %d bytes, header %d bytes, rest %d bytes: HMAC differs from crypto/hmac", n, hn, m)
				}
				want.Reset()
				want.Write([]byte(responseHeader + "."))
				want.Write(msg)
				got, ok = k.sumFrom(k.afterResponse, msg)
				if !ok || !bytes.Equal(got[:], want.Sum(nil)) {
					t.Fatalf("key %d bytes, response header, rest %d bytes: HMAC differs from crypto/hmac", n, m)
				}
			}
		}
	}
}

// TestKnownHeader checks that a request recognised by its header is
// verified from the state after the key's header, and one parsed in full
// over its own bytes: both verify the same token, and a key made for
// another header refuses the recognised one.
func TestKnownHeader(t *testing.T) {
	tok, _ := SignOnce(ak, tkt, TypeRequest, claims())
	full, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	known, err := ParseKnown(tok, TypeRequest)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := full.Verify(akm); err != nil {
		t.Errorf("parsed in full: %v", err)
	}
	if _, err := known.Verify(akm); err != nil {
		t.Errorf("recognised by its header: %v", err)
	}
	other := NewMACKey(ak, Header([]byte("another ticket"), TypeRequest))
	if _, err := full.Verify(other); err != nil {
		t.Errorf("parsed in full, under a key made for another header: %v", err)
	}
	if _, err := known.Verify(other); err == nil {
		t.Error("a token recognised as another header verified")
	}
}

func TestMACKeyZero(t *testing.T) {
	s := NewSigner(ak, tkt, TypeRequest)
	tok, _ := s.Sign(claims())
	s.Zero()
	if _, err := s.Sign(claims()); err == nil {
		t.Error("a zeroed key signed")
	}
	k := s.Key()
	for _, parse := range []func(string) (*Request, error){Parse, func(tok string) (*Request, error) { return ParseKnown(tok, TypeRequest) }} {
		r, err := parse(tok)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Verify(k); err == nil {
			t.Error("a zeroed key verified its own token")
		}
	}
	if _, err := SignResponse(k, &ResponseClaims{ID: "x", Status: 200, BodyHash: BodyHash(nil)}); err == nil {
		t.Error("a zeroed key signed a response")
	}
	if !isZero(k.inner) || !isZero(k.afterHeader) || !isZero(k.afterResponse) || !isZero(k.outer) {
		t.Error("Zero left key material")
	}
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
