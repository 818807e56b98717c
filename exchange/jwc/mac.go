package jwc

import (
	"crypto/sha512"
	"encoding"
	"hash"
)

// MACKey is a session's HS512 key (AK or RK) prepared for many MACs: the
// HMAC-SHA-512 inner and outer hash states after the padded key block,
// computed once instead of on every request. FIPS 198-1 §6 allows this
// precomputation and asks that the states be protected like the key; Zero
// clears them.
type MACKey struct {
	inner, outer []byte // marshalled SHA-512 states
}

// NewMACKey prepares key. The caller keeps ownership of key.
func NewMACKey(key []byte) *MACKey {
	var pad [sha512.BlockSize]byte
	defer clear(pad[:])
	if len(key) > len(pad) {
		sum := sha512.Sum512(key)
		copy(pad[:], sum[:])
		clear(sum[:])
	} else {
		copy(pad[:], key)
	}
	state := func(xor byte) []byte {
		h := sha512.New()
		for i := range pad {
			pad[i] ^= xor
		}
		h.Write(pad[:])
		b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil {
			panic("jwc: SHA-512 state does not marshal: " + err.Error())
		}
		return b
	}
	inner := state(0x36)
	outer := state(0x36 ^ 0x5c)
	return &MACKey{inner: inner, outer: outer}
}

// Zero clears the key's states. A zeroed key verifies nothing and signs
// nothing.
func (k *MACKey) Zero() {
	clear(k.inner)
	clear(k.outer)
}

// sum returns HMAC-SHA-512(key, msg); ok is false only for a key already
// zeroed, which callers treat as a MAC that does not verify.
func (k *MACKey) sum(msg []byte) (mac [sha512.Size]byte, ok bool) {
	h := sha512.New()
	if restore(h, k.inner) != nil {
		return mac, false
	}
	h.Write(msg)
	var in [sha512.Size]byte
	h.Sum(in[:0])
	if restore(h, k.outer) != nil {
		return mac, false
	}
	h.Write(in[:])
	h.Sum(mac[:0])
	return mac, true
}

func restore(h hash.Hash, state []byte) error {
	return h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state)
}
