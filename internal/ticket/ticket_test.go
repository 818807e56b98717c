package ticket

import (
	"bytes"
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

func TestFrame(t *testing.T) {
	f := &Frame{KeyID: KeyID{1, 2, 3, 4, 5, 6, 7, 8}, IV: bytes.Repeat([]byte{9}, IVSize), Sealed: bytes.Repeat([]byte{7}, 40)}
	b := f.Bytes()
	g, err := Parse(b)
	if err != nil || g.KeyID != f.KeyID || !bytes.Equal(g.IV, f.IV) || !bytes.Equal(g.Sealed, f.Sealed) {
		t.Fatalf("parse: %v", err)
	}
	if !bytes.Equal(AAD(f.KeyID), []byte{1, 1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatal("AAD")
	}
	for _, bad := range [][]byte{nil, b[:HeaderSize+TagSize-1], append([]byte{2}, b[1:]...), make([]byte, MaxSize+1)} {
		if _, err := Parse(bad); err != ErrInvalid {
			t.Errorf("accepted %d bytes", len(bad))
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
