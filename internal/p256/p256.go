// Package p256 holds the keys of the P-256 profile (SPEC §9): validated
// public points with their kids, and private scalars, over crypto/ecdh,
// whose arithmetic is constant time.
package p256

import (
	"bytes"
	"crypto/ecdh"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"

	"github.com/custos-kx/custos/internal/udf"
)

// Curve is the crv member's one accepted value.
const Curve = "P-256"

// Sizes of the encodings.
const (
	PointSize  = 65 // uncompressed SEC 1: 04 ‖ X ‖ Y
	ScalarSize = 32
	SharedSize = 32 // DH output: the x-coordinate
)

var curve = ecdh.P256()

// fieldPrime is p of P-256, big-endian, for the coordinate range check,
// which crypto/ecdh makes too but without saying which check failed.
var fieldPrime, _ = hex.DecodeString("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff")

// Point is a validated public key: an uncompressed point on P-256 that is
// not the identity. The only ways to get one check it.
type Point struct {
	k   *ecdh.PublicKey
	kid string
}

// InvalidError says why a received point was refused.
type InvalidError struct {
	Reason string
}

func (e *InvalidError) Error() string { return "invalid P-256 point: " + e.Reason }

func invalid(reason string) error { return &InvalidError{Reason: reason} }

// Decode validates a point in its wire form (SPEC §9).
func Decode(b []byte) (*Point, error) {
	switch {
	case len(b) == 0:
		return nil, invalid("the encoding is empty")
	case b[0] == 0x02 || b[0] == 0x03:
		return nil, invalid("the point is compressed; send the 65-byte uncompressed form 04 ‖ X ‖ Y")
	case b[0] == 0x06 || b[0] == 0x07:
		return nil, invalid("the point is in hybrid form; send the 65-byte uncompressed form 04 ‖ X ‖ Y")
	case b[0] != 0x04:
		return nil, invalid("the encoding does not start with 04 (uncompressed)")
	case len(b) != PointSize:
		return nil, invalid("an uncompressed point is exactly 65 bytes")
	case bytes.Compare(b[1:33], fieldPrime) >= 0 || bytes.Compare(b[33:65], fieldPrime) >= 0:
		return nil, invalid("a coordinate is not below the field prime")
	}
	k, err := curve.NewPublicKey(b)
	if err != nil {
		return nil, invalid("the point is not on the curve")
	}
	return newPoint(k), nil
}

func newPoint(k *ecdh.PublicKey) *Point {
	return &Point{k: k, kid: udf.Text(udf.Fingerprint(spki(k.Bytes())))}
}

// spkiPrefix is the DER of a P-256 SubjectPublicKeyInfo (RFC 5480:
// id-ecPublicKey, namedCurve prime256v1) up to the point's BIT STRING
// contents. Every P-256 SPKI is this prefix and the 65-byte point, so the
// kid of each key an exchange sees is made by appending rather than by
// crypto/x509 (which TestSPKIMatchesX509 holds it to).
var spkiPrefix = []byte{
	0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
	0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
}

func spki(point []byte) []byte {
	return append(append(make([]byte, 0, len(spkiPrefix)+PointSize), spkiPrefix...), point...)
}

// FromECDH wraps a crypto/ecdh P-256 public key.
func FromECDH(k *ecdh.PublicKey) (*Point, error) {
	if k.Curve() != curve {
		return nil, errors.New("p256: the key is not on P-256")
	}
	return newPoint(k), nil
}

// Bytes returns the 65-byte uncompressed encoding.
func (p *Point) Bytes() []byte { return p.k.Bytes() }

// KeyID returns the kid: the text UDF of the DER SubjectPublicKeyInfo.
func (p *Point) KeyID() string { return p.kid }

// ECDH returns the crypto/ecdh key.
func (p *Point) ECDH() *ecdh.PublicKey { return p.k }

// Equal reports whether p and o are the same point.
func (p *Point) Equal(o *Point) bool {
	return subtle.ConstantTimeCompare(p.k.Bytes(), o.k.Bytes()) == 1
}

// Scalar is a private key. crypto/ecdh keeps its own copy of the scalar,
// which it gives no way to overwrite; Zero overwrites this one's and drops
// the reference, so the other lives only until the collector reuses it.
type Scalar struct {
	b [ScalarSize]byte
	k *ecdh.PrivateKey
}

// GenerateScalar draws a private key from rand (uniform in [1, n−1] by
// rejection). It reads rand itself rather than calling ecdh's GenerateKey,
// which ignores its reader, so that tests can fix the randomness.
func GenerateScalar(rand io.Reader) (*Scalar, error) {
	for {
		s := new(Scalar)
		if _, err := io.ReadFull(rand, s.b[:]); err != nil {
			return nil, err
		}
		k, err := curve.NewPrivateKey(s.b[:])
		if err == nil {
			s.k = k
			return s, nil
		}
		s.Zero() // zero or ≥ n, with probability below 2^-32
	}
}

// NewScalar returns the private key with the given 32 big-endian bytes,
// which must be in [1, n−1].
func NewScalar(b []byte) (*Scalar, error) {
	if len(b) != ScalarSize {
		return nil, errors.New("p256: a private key is exactly 32 bytes")
	}
	s := new(Scalar)
	copy(s.b[:], b)
	k, err := curve.NewPrivateKey(s.b[:])
	if err != nil {
		s.Zero()
		return nil, errors.New("p256: a private key must be between 1 and n−1")
	}
	s.k = k
	return s, nil
}

// Public returns s·G.
func (s *Scalar) Public() *Point { return newPoint(s.k.PublicKey()) }

// DH returns the 32-byte big-endian x-coordinate of s·p. It fails only if
// the product is the identity. The caller zeroes the result.
func (s *Scalar) DH(p *Point) ([]byte, error) {
	return s.k.ECDH(p.k)
}

// Bytes returns a copy of the scalar's 32 big-endian bytes.
func (s *Scalar) Bytes() []byte { return append([]byte(nil), s.b[:]...) }

// Zero overwrites the scalar.
func (s *Scalar) Zero() {
	clear(s.b[:])
	s.k = nil
}
