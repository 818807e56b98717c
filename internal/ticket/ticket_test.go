package ticket

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
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

func (g *gcmSealer) Holds(id KeyID) bool                               { return id == g.id }
func (g *gcmSealer) SealingKey(context.Context) (KeyID, Scheme, error) { return g.id, GCM, nil }
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

// cbcSealer is the CBC-HMAC scheme over crypto/cipher and crypto/hmac,
// for the framing tests of version 2.
type cbcSealer struct {
	id       KeyID
	enc, mac []byte
}

func (c *cbcSealer) Holds(id KeyID) bool { return id == c.id }
func (c *cbcSealer) SealingKey(context.Context) (KeyID, Scheme, error) {
	return c.id, CBCHMAC, nil
}
func (c *cbcSealer) SealWith(_ context.Context, id KeyID, iv, aad, pt []byte) ([]byte, error) {
	block, _ := aes.NewCipher(c.enc)
	pad := aes.BlockSize - len(pt)%aes.BlockSize
	ct := append(bytes.Clone(pt), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(ct, ct)
	m := hmac.New(sha256.New, c.mac)
	m.Write(aad)
	m.Write(iv)
	m.Write(ct)
	return m.Sum(ct), nil
}
func (c *cbcSealer) OpenWith(_ context.Context, id KeyID, iv, aad, sealed []byte) ([]byte, error) {
	if id != c.id || len(iv) != 16 || len(sealed) < 32+16 {
		return nil, ErrInvalid
	}
	ct, tag := sealed[:len(sealed)-32], sealed[len(sealed)-32:]
	m := hmac.New(sha256.New, c.mac)
	m.Write(aad)
	m.Write(iv)
	m.Write(ct)
	if !hmac.Equal(m.Sum(nil), tag) || len(ct)%16 != 0 {
		return nil, ErrInvalid
	}
	block, _ := aes.NewCipher(c.enc)
	pt := bytes.Clone(ct)
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, pt)
	return pt[:len(pt)-int(pt[len(pt)-1])], nil
}

func TestFrameCBCHMAC(t *testing.T) {
	s := &cbcSealer{id: KeyID{8, 7, 6, 5, 4, 3, 2, 1}, enc: make([]byte, 32), mac: bytes.Repeat([]byte{1}, 32)}
	ctx := context.Background()
	for _, n := range []int{0, 15, 16, 200} {
		pt := bytes.Repeat([]byte("p"), n)
		b, err := Seal(ctx, s, rand.Reader, pt)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 1+KeyIDSize+16+(n/16+1)*16+32 || b[0] != byte(CBCHMAC) || !bytes.Equal(b[1:9], s.id[:]) {
			t.Fatalf("%d bytes: frame %x", n, b)
		}
		if id, ok := SealedBy(b); !ok || id != s.id {
			t.Fatal("SealedBy refuses a version 2 ticket")
		}
		got, err := Open(ctx, s, b)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: open %v", n, err)
		}
		// The MAC covers the version and key id (the AAD) and the IV.
		for _, i := range []int{0, 1, 9, 24} {
			bad := bytes.Clone(b)
			bad[i] ^= 2
			if _, err := Open(ctx, s, bad); err == nil {
				t.Fatalf("%d bytes: byte %d flipped, still opens", n, i)
			}
		}
	}
	if _, ok := SealedBy(append([]byte{3}, make([]byte, 40)...)); ok {
		t.Fatal("version 3 accepted")
	}
}
