package jwc

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha512"
	"testing"
)

// TestMACKey checks the precomputed HMAC against crypto/hmac for keys
// shorter than, as long as, and longer than SHA-512's block.
func TestMACKey(t *testing.T) {
	for _, n := range []int{0, 1, 32, 64, 127, 128, 129, 200, 300} {
		key := make([]byte, n)
		rand.Read(key)
		k := NewMACKey(key)
		for _, m := range []int{0, 1, 111, 112, 128, 700, 5000} {
			msg := make([]byte, m)
			rand.Read(msg)
			want := hmac.New(sha512.New, key)
			want.Write(msg)
			got, ok := k.sum(msg)
			if !ok || !bytes.Equal(got[:], want.Sum(nil)) {
				t.Fatalf("key %d bytes, message %d bytes: HMAC differs from crypto/hmac", n, m)
			}
		}
	}
}

func TestMACKeyZero(t *testing.T) {
	k := NewMACKey(ak)
	tok, _ := Sign(k, Header(tkt, TypeRequest), claims())
	k.Zero()
	if _, err := Sign(k, Header(tkt, TypeRequest), claims()); err == nil {
		t.Error("a zeroed key signed")
	}
	r, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Verify(k); err == nil {
		t.Error("a zeroed key verified its own token")
	}
	if !isZero(k.inner) || !isZero(k.outer) {
		t.Error("Zero left key material")
	}
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
