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
//
// Every request token of a session starts with the same header part, which
// names the ticket and is most of the token, so the key also keeps the
// inner state after that header part and its ".": a request's MAC then
// hashes only its payload (two SHA-512 blocks instead of eight).
type MACKey struct {
	inner, outer []byte // marshalled SHA-512 states after the padded key block
	afterHeader  []byte // inner, after also the header part and "."
	// afterResponse is inner after the header part of every response
	// signature (responseHeader) and ".", for the session's responses.
	afterResponse []byte
}

// NewMACKey prepares key for the tokens whose header part is hdr
// (Header(t, typ) of the session), and for any other message; hdr is ""
// for a key that makes or checks no such token. The caller keeps
// ownership of key; hdr is not kept.
func NewMACKey(key []byte, hdr string) *MACKey {
	var k0 [sha512.BlockSize]byte // the key, padded to a block
	if len(key) > len(k0) {
		sum := sha512.Sum512(key)
		copy(k0[:], sum[:])
		clear(sum[:])
	} else {
		copy(k0[:], key)
	}
	ipad, opad := k0, k0
	for i := range k0 {
		ipad[i] ^= 0x36
		opad[i] ^= 0x5c
	}
	h := sha512.New()
	defer func() { clear(k0[:]); clear(ipad[:]); clear(opad[:]); h.Reset() }()
	state := func(pad []byte, prefix ...string) []byte {
		h.Reset()
		h.Write(pad)
		for _, p := range prefix {
			h.Write([]byte(p))
		}
		b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil {
			panic("jwc: SHA-512 state does not marshal: " + err.Error())
		}
		return b
	}
	return &MACKey{
		inner:         state(ipad[:]),
		afterHeader:   state(ipad[:], hdr, "."),
		afterResponse: state(ipad[:], responseHeader, "."),
		outer:         state(opad[:]),
	}
}

// Zero clears the key's states. A zeroed key verifies nothing and signs
// nothing.
func (k *MACKey) Zero() {
	clear(k.inner)
	clear(k.afterHeader)
	clear(k.afterResponse)
	clear(k.outer)
}

// sum returns HMAC-SHA-512(key, msg); ok is false only for a key already
// zeroed, which callers treat as a MAC that does not verify.
func (k *MACKey) sum(msg []byte) (mac [sha512.Size]byte, ok bool) {
	return k.sumFrom(k.inner, msg)
}

func (k *MACKey) sumFrom(inner, msg []byte) (mac [sha512.Size]byte, ok bool) {
	h := sha512.New()
	if restore(h, inner) != nil {
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
