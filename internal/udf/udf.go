// Package udf computes the Mesh "Uniform Data Fingerprints" that name keys
// (kid) and groups (Domain) in jwcexchange messages.
//
// It reproduces the 2017 reference implementation exactly, quirks included:
// see vectors.md beside this file. The quirk that matters is that INTEGERs are
// encoded from little-endian byte arrays as if they were big-endian, so the
// fingerprint of a key is not the fingerprint of its DER SubjectPublicKeyInfo.
package udf

import (
	"crypto/sha512"
	"encoding/base32"
	"strings"
)

// Size is the length of a binary fingerprint: a version byte and 150 bits.
const Size = 19

// version is the UDF version byte for SHA-2-512 fingerprints.
const version = 0x60

const contentType = "application/x509-keyinfo"

// Fingerprint returns the binary UDF of data.
func Fingerprint(data []byte) [Size]byte {
	inner := sha512.Sum512(data)
	h := sha512.New()
	h.Write([]byte(contentType))
	h.Write([]byte{':'})
	h.Write(inner[:])
	sum := h.Sum(nil)

	var fp [Size]byte
	fp[0] = version
	copy(fp[1:18], sum[:17])
	fp[18] = sum[17] << 2
	return fp
}

// Text returns the presentation form of a fingerprint: 30 Base32 characters
// in dash-separated groups of five.
func Text(fp [Size]byte) string {
	b32 := base32.StdEncoding.EncodeToString(fp[:])[:30]
	var sb strings.Builder
	for i := 0; i < len(b32); i += 5 {
		if i > 0 {
			sb.WriteByte('-')
		}
		sb.WriteString(b32[i : i+5])
	}
	return sb.String()
}

// Domain returns the binary fingerprint of a Diffie-Hellman group given its
// modulus and generator as little-endian two's-complement arrays.
func Domain(modulusLE, generatorLE []byte) [Size]byte {
	return Fingerprint(sequence(integer(modulusLE), integer(generatorLE)))
}

// KeyID returns the kid of a public value in the group named by domain, given
// the value's wire (little-endian two's-complement) encoding.
func KeyID(domain [Size]byte, publicLE []byte) string {
	return Text(Fingerprint(sequence(octetString(domain[:]), integer(publicLE))))
}

// integer encodes a as the reference encoder did: leading zero bytes of the
// array as stored are dropped (they are the least significant bytes of the
// number) and a 00 is prefixed when the first remaining byte has its top bit set.
func integer(a []byte) []byte {
	i := 0
	for i < len(a) && a[i] == 0 {
		i++
	}
	content := a[i:]
	if len(content) == 0 {
		content = []byte{0}
	} else if content[0] >= 0x80 {
		content = append([]byte{0}, content...)
	}
	return tlv(0x02, content)
}

func octetString(b []byte) []byte { return tlv(0x04, b) }

func sequence(members ...[]byte) []byte {
	var body []byte
	for _, m := range members {
		body = append(body, m...)
	}
	return tlv(0x30, body)
}

// tlv writes a DER tag, definite length and content.
func tlv(tag byte, content []byte) []byte {
	n := len(content)
	out := []byte{tag}
	switch {
	case n < 0x80:
		out = append(out, byte(n))
	case n < 0x100:
		out = append(out, 0x81, byte(n))
	default:
		out = append(out, 0x82, byte(n>>8), byte(n))
	}
	return append(out, content...)
}
