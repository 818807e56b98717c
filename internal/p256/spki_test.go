package p256

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"testing"
)

// TestSPKIMatchesX509 holds the hand-appended SubjectPublicKeyInfo to
// crypto/x509's, which it replaces for speed.
func TestSPKIMatchesX509(t *testing.T) {
	for range 200 {
		k, err := curve.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		want, err := x509.MarshalPKIXPublicKey(k.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		if got := spki(k.PublicKey().Bytes()); !bytes.Equal(got, want) {
			t.Fatalf("spki = %x\nx509 = %x", got, want)
		}
	}
}
