// Package group is the arithmetic core of jwcexchange: the RFC 3526 group 14
// (2048-bit MODP, generator 2), validated public values in their wire
// encoding, 256-bit private exponents, and the constant-time operations that
// touch secrets.
//
// The rule of the package: anything derived from a private exponent is
// computed with filippo.io/bigmod, whose running time does not depend on the
// values it works on. math/big is used only on public values.
package group

import (
	"encoding/hex"
	"math/big"
	"strings"

	"filippo.io/bigmod"

	"github.com/custos-kx/custos/internal/udf"
)

// Size is the length in bytes of a group element in big-endian form.
const Size = 256

// primeHex is the RFC 3526 2048-bit MODP prime.
const primeHex = `
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
15728E5A 8AACAA68 FFFFFFFF FFFFFFFF`

var (
	p, q, pMinus2 *big.Int
	pBytes        []byte
	pMod, qMod    *bigmod.Modulus
	generator     *bigmod.Nat
	domain        [udf.Size]byte
)

func init() {
	b, err := hex.DecodeString(strings.Join(strings.Fields(primeHex), ""))
	if err != nil {
		panic(err)
	}
	pBytes = b
	p = new(big.Int).SetBytes(b)
	q = new(big.Int).Rsh(p, 1)
	pMinus2 = new(big.Int).Sub(p, big.NewInt(2))
	if pMod, err = bigmod.NewModulus(b); err != nil {
		panic(err)
	}
	if qMod, err = bigmod.NewModulus(q.Bytes()); err != nil {
		panic(err)
	}
	generator, _ = bigmod.NewNat().SetBytes([]byte{2}, pMod)
	// The Domain fingerprints M and G as .NET's ToByteArray wrote them.
	domain = udf.Domain(toWire(p), []byte{2})
}

// P returns the group's prime modulus.
func P() *big.Int { return new(big.Int).Set(p) }

// Q returns the order of the subgroup the public values live in, (P−1)/2.
func Q() *big.Int { return new(big.Int).Set(q) }

// Generator is the group's generator, 2.
const Generator = 2

// Domain returns the group's 19-byte identifier, the binary UDF of its
// parameters. Messages carry it as the Domain member of every key.
func Domain() [udf.Size]byte { return domain }
