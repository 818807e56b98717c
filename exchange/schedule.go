package exchange

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"io"
	"strings"

	"golang.org/x/crypto/hkdf"

	"github.com/custos-kx/custos/internal/ticket"
	"github.com/custos-kx/custos/internal/wire"
)

// WitnessSize is the length of the witness, an HMAC-SHA-256.
const WitnessSize = 32

// keys is the output of the key schedule (SPEC §4).
type keys struct {
	prk        [64]byte
	ak, ek, rk [ticket.KeySize]byte
	wk         [32]byte
}

// zeroSalt is the exchange's HKDF salt; a rekey uses the old session's RK.
var zeroSalt = make([]byte, sha512.Size)

// schedule derives the session keys from IKM = BE(σ) and the transcript hash.
func schedule(salt, ikm, th []byte) *keys {
	k := new(keys)
	prk := hkdf.Extract(sha512.New, ikm, salt)
	copy(k.prk[:], prk)
	clear(prk)
	for _, out := range []struct {
		label string
		key   []byte
	}{
		{"authentication", k.ak[:]},
		{"encryption", k.ek[:]},
		{"rekey", k.rk[:]},
		{"witness", k.wk[:]},
	} {
		info := append([]byte(out.label), th...)
		if _, err := io.ReadFull(hkdf.Expand(sha512.New, k.prk[:], info), out.key); err != nil {
			panic("exchange: HKDF expand failed: " + err.Error()) // only for outputs over 255·64 bytes
		}
	}
	return k
}

func (k *keys) zero() {
	clear(k.prk[:])
	clear(k.ak[:])
	clear(k.ek[:])
	clear(k.rk[:])
	clear(k.wk[:])
}

// witness returns HMAC-SHA-256(WK, H(LP(Ticket) ‖ LP(E) ‖ LP(A) ‖ LP(O))),
// which binds the ticket and the algorithm choice to the agreed key.
func witness(wk, ticket []byte, s Suite, offer []wire.Suite) []byte {
	var o []byte
	for _, suite := range offer {
		o = lp(o, []byte(strings.Join(suite.Encryption, ",")))
		o = lp(o, []byte(strings.Join(suite.Authentication, ",")))
	}
	var msg []byte
	msg = lp(msg, ticket)
	msg = lp(msg, []byte(s.Encryption))
	msg = lp(msg, []byte(s.Authentication))
	msg = lp(msg, o)
	digest := sha512.Sum512(msg)
	mac := hmac.New(sha256.New, wk)
	mac.Write(digest[:])
	return mac.Sum(nil)
}

// lp appends the 4-byte big-endian length of b, then b.
func lp(dst, b []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}
