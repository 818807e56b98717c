package group

import (
	"crypto/subtle"
	"sync"

	"filippo.io/bigmod"
)

// Fixed-base exponentiation. Every exchange and rekey computes g^r for a
// fresh r, so the powers of g are worth precomputing: with
// baseTable()[i][j] = g^(j·16^i), g^s is the product of one entry per
// 4-bit digit of s — 64 multiplications and no squarings, where bigmod's
// Exp does 256 squarings and 64 multiplications. Each entry is picked by
// reading the whole row under a mask, so the digits of s do not show in
// memory access or timing. The table is 256 KiB, built on first use.

const (
	digitBits = 4
	digits    = ScalarSize * 8 / digitBits
	rowSize   = 1 << digitBits
)

var baseTable = sync.OnceValue(func() *[digits][rowSize]*bigmod.Nat {
	t := new([digits][rowSize]*bigmod.Nat)
	pow := bigmod.NewNat().SetUint(2).ExpandFor(pMod) // g^(16^i)
	for i := range digits {
		t[i][0] = bigmod.NewNat().SetUint(1).ExpandFor(pMod)
		t[i][1] = bigmod.NewNat().ExpandFor(pMod)
		copy(t[i][1].Bits(), pow.Bits())
		for j := 2; j < rowSize; j++ {
			t[i][j] = bigmod.NewNat().ExpandFor(pMod)
			copy(t[i][j].Bits(), t[i][j-1].Bits())
			t[i][j].Mul(pow, pMod)
		}
		copy(pow.Bits(), t[i][rowSize-1].Bits())
		pow.Mul(t[i][1], pMod) // g^(16·16^i)
	}
	return t
})

// expBase returns g^e mod p for a ScalarSize-byte big-endian exponent, in
// constant time with respect to e. The caller zeroes the result.
func expBase(e []byte) *bigmod.Nat {
	t := baseTable()
	out := bigmod.NewNat().ExpandFor(pMod)
	entry := bigmod.NewNat().ExpandFor(pMod)
	for i := range digits {
		b := e[len(e)-1-i/2]
		digit := int(b>>(digitBits*(i%2))) & (rowSize - 1)
		dst := entry.Bits()
		if i == 0 {
			dst = out.Bits()
		}
		for j := range rowSize {
			mask := -uint(subtle.ConstantTimeEq(int32(digit), int32(j)))
			for k, w := range t[i][j].Bits() {
				dst[k] ^= mask & (dst[k] ^ w)
			}
		}
		if i > 0 {
			out.Mul(entry, pMod)
		}
	}
	entry.SetUint(0)
	return out
}
