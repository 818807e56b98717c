// Package ticket defines the service's session ticket: the framing every
// sealer uses (SPEC §5) and the plaintext it protects. Tickets are opaque to
// clients; only the service that sealed them, or a replica sharing its token,
// can open them, so the service keeps no per-session state.
//
//	Ticket = 0x01 ‖ KeyID(8) ‖ IV(12) ‖ AES-256-GCM(key KeyID, IV, plaintext, AAD = 0x01 ‖ KeyID)
package ticket

import (
	"encoding/binary"
	"errors"
	"time"
)

const (
	Version   = 0x01
	KeyIDSize = 8
	IVSize    = 12
	TagSize   = 16
	// HeaderSize is the framing before the ciphertext.
	HeaderSize = 1 + KeyIDSize + IVSize
	// MaxSize bounds what any opener will look at.
	MaxSize = 4096
)

// KeyID names a ticket-sealing key.
type KeyID [KeyIDSize]byte

// ErrInvalid is returned for any ticket that does not open: wrong framing,
// unknown key, or failed authentication. Callers must not tell these apart
// to a client.
var ErrInvalid = errors.New("ticket: not a valid ticket")

// AAD returns the additional data sealed with a ticket under key id.
func AAD(id KeyID) []byte {
	return append([]byte{Version}, id[:]...)
}

// Frame is a parsed, still sealed ticket.
type Frame struct {
	KeyID KeyID
	IV    []byte
	// Sealed is the GCM ciphertext with its 16-byte tag appended.
	Sealed []byte
}

// Parse splits a ticket into its parts, checking the version, the IV length
// and that there is room for a full 128-bit tag, which a token would not.
func Parse(t []byte) (*Frame, error) {
	if len(t) < HeaderSize+TagSize || len(t) > MaxSize || t[0] != Version {
		return nil, ErrInvalid
	}
	f := &Frame{IV: t[1+KeyIDSize : HeaderSize], Sealed: t[HeaderSize:]}
	copy(f.KeyID[:], t[1:1+KeyIDSize])
	return f, nil
}

// Bytes assembles the ticket. It panics on an IV or tag of the wrong size,
// which would be a bug in the sealer.
func (f *Frame) Bytes() []byte {
	if len(f.IV) != IVSize || len(f.Sealed) < TagSize {
		panic("ticket: frame with a bad IV or tag length")
	}
	out := make([]byte, 0, HeaderSize+len(f.Sealed))
	out = append(out, Version)
	out = append(out, f.KeyID[:]...)
	out = append(out, f.IV...)
	return append(out, f.Sealed...)
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
	AK, EK, RK     [KeySize]byte
}

const plaintextVersion = 1

// MarshalBinary encodes the session. The caller zeroes the result after sealing.
func (s *Session) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, 256+len(s.Account))
	out = append(out, plaintextVersion)
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
	if len(b) < 1 || b[0] != plaintextVersion {
		return ErrInvalid
	}
	b = b[1:]
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
