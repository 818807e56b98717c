// Package ticket defines the service's session ticket: its framing (SPEC
// §5), written here once over the AEAD each keystore provides, and the
// plaintext it protects. Tickets are opaque to
// clients; only the service that sealed them, or a replica sharing its token,
// can open them, so the service keeps no per-session state.
//
//	Ticket = 0x01 ‖ KeyID(8) ‖ IV(12) ‖ AES-256-GCM(key KeyID, IV, plaintext, AAD = 0x01 ‖ KeyID)
//
// Tokens without a working AES-GCM (opencryptoki's soft token, NSS softokn
// through PKCS#11) seal with AES-256-CBC-PAD and HMAC-SHA-256,
// encrypt-then-MAC, two keys in the token under one KeyID:
//
//	Ticket = 0x02 ‖ KeyID(8) ‖ IV(16) ‖ C ‖ HMAC-SHA-256(MAC key, 0x02 ‖ KeyID ‖ IV ‖ C),  C = AES-256-CBC-PAD(key, IV, plaintext)
//
// The version byte names the scheme, so the two open side by side.
package ticket

import (
	"context"
	"crypto/aes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

const (
	Version   = byte(GCM)
	KeyIDSize = 8
	IVSize    = 12
	TagSize   = 16
	// HeaderSize is the framing before the ciphertext of a GCM ticket.
	HeaderSize = 1 + KeyIDSize + IVSize
	// MaxSize bounds what any opener will look at.
	MaxSize = 4096
)

// Scheme is how a sealing key seals; it is the ticket's version byte.
type Scheme byte

const (
	// GCM is AES-256-GCM with a 12-byte IV and a 16-byte tag.
	GCM Scheme = 0x01
	// CBCHMAC is AES-256-CBC-PAD with a 16-byte IV, then HMAC-SHA-256
	// over the additional data, the IV and the ciphertext: a 32-byte tag.
	CBCHMAC Scheme = 0x02
)

func (s Scheme) String() string {
	switch s {
	case GCM:
		return "AES-256-GCM"
	case CBCHMAC:
		return "AES-256-CBC-PAD + HMAC-SHA-256"
	}
	return fmt.Sprintf("scheme(%d)", byte(s))
}

// IVSize is the length of the scheme's IV.
func (s Scheme) IVSize() int {
	if s == CBCHMAC {
		return 16
	}
	return IVSize
}

// TagSize is the length of the scheme's tag.
func (s Scheme) TagSize() int {
	if s == CBCHMAC {
		return 32
	}
	return TagSize
}

func (s Scheme) valid() bool { return s == GCM || s == CBCHMAC }

// KeyID names a ticket-sealing key.
type KeyID [KeyIDSize]byte

// ErrInvalid is returned for any ticket that does not open: wrong framing,
// unknown key, or failed authentication. Callers must not tell these apart
// to a client.
var ErrInvalid = errors.New("ticket: not a valid ticket")

// Sealer is the AEAD a keystore provides for tickets, of one Scheme per
// key, under keys it keeps and names by KeyID. It never sees the framing;
// Seal and Open below write and read it, once for every keystore.
type Sealer interface {
	// SealingKey names the key new tickets are sealed under, and its
	// scheme.
	SealingKey(ctx context.Context) (KeyID, Scheme, error)
	// SealWith encrypts plaintext under key id with iv (of the key's
	// scheme's size) and aad, and returns the ciphertext with the tag
	// appended. An iv of the wrong size for the key is an error.
	SealWith(ctx context.Context, id KeyID, iv, aad, plaintext []byte) ([]byte, error)
	// OpenWith reverses SealWith. A key it does not hold, or a ciphertext
	// that does not authenticate, gives ErrInvalid; any other error is the
	// keystore's own failure.
	OpenWith(ctx context.Context, id KeyID, iv, aad, sealed []byte) ([]byte, error)
	// Holds reports, without a token operation, whether key id is still
	// held: a ticket opened once and kept in memory is refused once its
	// key has been pruned.
	Holds(id KeyID) bool
}

// aad returns the additional data sealed with a ticket of scheme s under
// key id: the ticket's first bytes.
func aad(s Scheme, id KeyID) []byte {
	return append([]byte{byte(s)}, id[:]...)
}

// Seal seals plaintext under s's active key, with a fresh IV from rand,
// and returns the ticket.
func Seal(ctx context.Context, s Sealer, rand io.Reader, plaintext []byte) ([]byte, error) {
	id, scheme, err := s.SealingKey(ctx)
	if err != nil {
		return nil, err
	}
	if !scheme.valid() {
		return nil, fmt.Errorf("ticket: the sealer names an unknown scheme %d", byte(scheme))
	}
	header := 1 + KeyIDSize + scheme.IVSize()
	out := make([]byte, header, header+len(plaintext)+aes.BlockSize+scheme.TagSize())
	out[0] = byte(scheme)
	copy(out[1:], id[:])
	iv := out[1+KeyIDSize : header]
	if _, err := io.ReadFull(rand, iv); err != nil {
		return nil, err
	}
	sealed, err := s.SealWith(ctx, id, iv, aad(scheme, id), plaintext)
	if err != nil {
		return nil, err
	}
	if want := sealedSize(scheme, len(plaintext)); len(sealed) != want {
		return nil, fmt.Errorf("ticket: the sealer returned %d bytes for %d of plaintext, not %d", len(sealed), len(plaintext), want)
	}
	return append(out, sealed...), nil
}

// sealedSize is the length of n bytes of plaintext sealed: the same plus
// the tag under GCM; padded to whole blocks (1 to 16 bytes more) under CBC.
func sealedSize(s Scheme, n int) int {
	if s == CBCHMAC {
		return (n/aes.BlockSize+1)*aes.BlockSize + s.TagSize()
	}
	return n + s.TagSize()
}

// Open returns the plaintext of ticket t. Anything that is not a ticket
// sealed by a key s still holds gives ErrInvalid, checked here for the
// version, the IV length and room for a full tag, which a token would not
// check. The caller zeroes the plaintext.
func Open(ctx context.Context, s Sealer, t []byte) ([]byte, error) {
	id, ok := SealedBy(t)
	if !ok {
		return nil, ErrInvalid
	}
	scheme := Scheme(t[0])
	header := 1 + KeyIDSize + scheme.IVSize()
	if len(t) < header+scheme.TagSize() {
		return nil, ErrInvalid
	}
	return s.OpenWith(ctx, id, t[1+KeyIDSize:header], aad(scheme, id), t[header:])
}

// SealedBy names the key a ticket says it was sealed under, without
// checking that it was.
func SealedBy(t []byte) (KeyID, bool) {
	var id KeyID
	if len(t) < HeaderSize || len(t) > MaxSize || !Scheme(t[0]).valid() {
		return id, false
	}
	copy(id[:], t[1:1+KeyIDSize])
	return id, true
}

// KeySize is the length of each session key.
const KeySize = 64

// Session is a ticket's plaintext: what the service needs to authenticate
// the session's requests and to rekey it, and nothing else.
type Session struct {
	Account        string
	CredentialKID  string
	IssuedAt       time.Time
	Expires        time.Time // end of the session: requests are refused after it
	RekeyExpires   time.Time // end of the window in which RK can start a rekey
	Encryption     string
	Authentication string
	Generation     uint32 // 0 for an exchange, +1 for each rekey
	// Profile is the key agreement the session was made with (the
	// engine's exchange.Profile), which its rekeys keep.
	Profile    uint8
	AK, EK, RK [KeySize]byte
}

// Plaintext versions: 2 adds the profile after the version byte; a
// version 1 plaintext is of profile 1, the only one there was.
const (
	plaintextVersion   = 2
	plaintextVersionV1 = 1
)

// MarshalBinary encodes the session. The caller zeroes the result after sealing.
func (s *Session) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, 256+len(s.Account))
	out = append(out, plaintextVersion, s.Profile)
	for _, str := range []string{s.Account, s.CredentialKID, s.Encryption, s.Authentication} {
		if len(str) > 0xffff {
			return nil, errors.New("ticket: string field too long")
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(str)))
		out = append(out, str...)
	}
	for _, t := range []time.Time{s.IssuedAt, s.Expires, s.RekeyExpires} {
		out = binary.BigEndian.AppendUint64(out, uint64(t.Unix()))
	}
	out = binary.BigEndian.AppendUint32(out, s.Generation)
	out = append(out, s.AK[:]...)
	out = append(out, s.EK[:]...)
	return append(out, s.RK[:]...), nil
}

// UnmarshalBinary decodes a session encoded by MarshalBinary.
func (s *Session) UnmarshalBinary(b []byte) error {
	switch {
	case len(b) >= 2 && b[0] == plaintextVersion:
		s.Profile, b = b[1], b[2:]
	case len(b) >= 1 && b[0] == plaintextVersionV1:
		s.Profile, b = 1, b[1:]
	default:
		return ErrInvalid
	}
	var strs [4]string
	for i := range strs {
		if len(b) < 2 {
			return ErrInvalid
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return ErrInvalid
		}
		strs[i], b = string(b[2:2+n]), b[2+n:]
	}
	if len(b) != 3*8+4+3*KeySize {
		return ErrInvalid
	}
	s.Account, s.CredentialKID, s.Encryption, s.Authentication = strs[0], strs[1], strs[2], strs[3]
	var times [3]time.Time
	for i := range times {
		times[i] = time.Unix(int64(binary.BigEndian.Uint64(b)), 0)
		b = b[8:]
	}
	s.IssuedAt, s.Expires, s.RekeyExpires = times[0], times[1], times[2]
	s.Generation = binary.BigEndian.Uint32(b)
	b = b[4:]
	copy(s.AK[:], b)
	copy(s.EK[:], b[KeySize:])
	copy(s.RK[:], b[2*KeySize:])
	return nil
}

// Zero overwrites the session keys.
func (s *Session) Zero() {
	clear(s.AK[:])
	clear(s.EK[:])
	clear(s.RK[:])
}
