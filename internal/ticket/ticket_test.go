package ticket

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"
	"time"
)

func TestSessionRoundTrip(t *testing.T) {
	s := Session{
		Account: "alice@example.com", CredentialKID: "MBPYH-H2LPG-VWBJF-MA7GC-NZG4X-M3G2A",
		IssuedAt: time.Unix(1700000000, 0), Expires: time.Unix(1700003600, 0), RekeyExpires: time.Unix(1700604800, 0),
		Encryption: "A256CBC-HS512", Authentication: "HS512", Generation: 7,
	}
	for i := range s.AK {
		s.AK[i], s.EK[i], s.RK[i] = byte(i), byte(i+1), byte(i+2)
	}
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Session
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got != s {
		t.Fatalf("round trip: %+v", got)
	}
	for n := 0; n < len(b); n++ {
		if err := new(Session).UnmarshalBinary(b[:n]); err == nil {
			t.Fatalf("truncated to %d bytes accepted", n)
		}
	}
	if err := new(Session).UnmarshalBinary(append(b, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	got.Zero()
	if got.AK != [KeySize]byte{} || got.RK != [KeySize]byte{} {
		t.Fatal("Zero left keys")
	}
}

// gcmSealer is a Sealer over crypto/cipher with one key, for the framing tests.
type gcmSealer struct {
	id   KeyID
	aead cipher.AEAD
}

func (g *gcmSealer) Holds(id KeyID) bool                       { return id == g.id }
func (g *gcmSealer) SealingKey(context.Context) (KeyID, error) { return g.id, nil }
func (g *gcmSealer) SealWith(_ context.Context, id KeyID, iv, aad, pt []byte) ([]byte, error) {
	return g.aead.Seal(nil, iv, pt, aad), nil
}
func (g *gcmSealer) OpenWith(_ context.Context, id KeyID, iv, aad, sealed []byte) ([]byte, error) {
	if id != g.id {
		return nil, ErrInvalid
	}
	pt, err := g.aead.Open(nil, iv, sealed, aad)
	if err != nil {
		return nil, ErrInvalid
	}
	return pt, nil
}

func TestFrame(t *testing.T) {
	block, _ := aes.NewCipher(make([]byte, 32))
	aead, _ := cipher.NewGCM(block)
	s := &gcmSealer{id: KeyID{1, 2, 3, 4, 5, 6, 7, 8}, aead: aead}
	ctx := context.Background()
	b, err := Seal(ctx, s, rand.Reader, []byte("plaintext"))
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != HeaderSize+len("plaintext")+TagSize || b[0] != Version || !bytes.Equal(b[1:9], s.id[:]) {
		t.Fatalf("frame %x", b)
	}
	if id, ok := SealedBy(b); !ok || id != s.id {
		t.Fatal("SealedBy")
	}
	pt, err := Open(ctx, s, b)
	if err != nil || string(pt) != "plaintext" {
		t.Fatalf("open: %q %v", pt, err)
	}
	// The AAD is the version and key id: a ticket relabelled as another
	// version does not open even if an opener ignored the version byte.
	iv := b[1+KeyIDSize : HeaderSize]
	if _, err := aead.Open(nil, iv, b[HeaderSize:], []byte{1, 1, 2, 3, 4, 5, 6, 7, 8}); err != nil {
		t.Fatal("AAD is not version ‖ key id")
	}
	flipped := bytes.Clone(b)
	flipped[len(flipped)-1] ^= 1
	other := bytes.Clone(b)
	other[1] ^= 1
	for _, bad := range [][]byte{nil, b[:HeaderSize+TagSize-1], append([]byte{2}, b[1:]...), make([]byte, MaxSize+1), flipped, other} {
		if _, err := Open(ctx, s, bad); err != ErrInvalid {
			t.Errorf("accepted %d bytes: %v", len(bad), err)
		}
	}
}

// FuzzSessionUnmarshal feeds arbitrary plaintexts to the session decoder:
// it must never panic, and what it accepts must encode back to itself.
func FuzzSessionUnmarshal(f *testing.F) {
	s := &Session{Account: "alice@example.com", CredentialKID: "KID", Encryption: "A256CBC-HS512", Authentication: "HS512",
		IssuedAt: time.Unix(1700000000, 0), Expires: time.Unix(1700003600, 0), RekeyExpires: time.Unix(1700600000, 0), Generation: 3}
	good, _ := s.MarshalBinary()
	f.Add(good)
	f.Add([]byte{plaintextVersion})
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Session
		if s.UnmarshalBinary(b) != nil {
			return
		}
		again, err := s.MarshalBinary()
		if err != nil || string(again) != string(b) {
			t.Fatalf("decoded %x, which encodes to %x (%v)", b, again, err)
		}
	})
}
