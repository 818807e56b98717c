package exchange

// An independent implementation of SPEC §3, §4 and §7 with math/big and
// crypto/hmac, written from the SPEC and sharing no code with the engine. It
// produces the known-answer vectors and checks them.

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"math/big"
	"strings"
)

var refP, _ = new(big.Int).SetString(strings.Join(strings.Fields(`
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74
020BBEA6 3B139B22 514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437
4FE1356D 6D51C245 E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D C2007CB8 A163BF05
98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB
9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718
3995497C EA956AE5 15D22618 98FA0510 15728E5A 8AACAA68 FFFFFFFF FFFFFFFF`), ""), 16)

var refDomain, _ = hex.DecodeString("604e9b9ead4c957e688da26da3a3cb3ff3c4c0")

func refBE(v *big.Int) []byte { return v.FillBytes(make([]byte, 256)) }

func refExp(b, e *big.Int) *big.Int { return new(big.Int).Exp(b, e, refP) }

func refMul(a, b *big.Int) *big.Int {
	v := new(big.Int).Mul(a, b)
	return v.Mod(v, refP)
}

func refHKDF(salt, ikm []byte, info string, th []byte, n int) (prk, out []byte) {
	m := hmac.New(sha512.New, salt)
	m.Write(ikm)
	prk = m.Sum(nil)
	var t []byte
	for i := byte(1); len(out) < n; i++ {
		m = hmac.New(sha512.New, prk)
		m.Write(t)
		m.Write([]byte(info))
		m.Write(th)
		m.Write([]byte{i})
		t = m.Sum(nil)
		out = append(out, t...)
	}
	return prk, out[:n]
}

type refKeys struct{ PRK, AK, EK, RK, WK []byte }

func refSchedule(salt []byte, sigma *big.Int, th []byte) refKeys {
	return refScheduleIKM(salt, refBE(sigma), th)
}

func refScheduleIKM(salt, ikm, th []byte) refKeys {
	var k refKeys
	k.PRK, k.AK = refHKDF(salt, ikm, "authentication", th, 64)
	_, k.EK = refHKDF(salt, ikm, "encryption", th, 64)
	_, k.RK = refHKDF(salt, ikm, "rekey", th, 64)
	_, k.WK = refHKDF(salt, ikm, "witness", th, 32)
	return k
}

func refLP(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

type refSuite struct {
	Encryption     []string `json:"Encryption"`
	Authentication []string `json:"Authentication"`
}

func refWitness(wk, tkt []byte, enc, auth string, offer []refSuite) []byte {
	var o []byte
	for _, s := range offer {
		o = append(o, refLP([]byte(strings.Join(s.Encryption, ",")))...)
		o = append(o, refLP([]byte(strings.Join(s.Authentication, ",")))...)
	}
	msg := append(refLP(tkt), refLP([]byte(enc))...)
	msg = append(msg, refLP([]byte(auth))...)
	msg = append(msg, refLP(o)...)
	d := sha512.Sum512(msg)
	m := hmac.New(sha256.New, wk)
	m.Write(d[:])
	return m.Sum(nil)
}

// refExchange computes both sides of an exchange and returns σ from each.
func refExchange(c, n, x, r *big.Int) (th []byte, d, e, sigmaClient, sigmaServer *big.Int) {
	g := big.NewInt(2)
	C, N, X, R := refExp(g, c), refExp(g, n), refExp(g, x), refExp(g, r)
	th = refTranscript(C, N, X, R)
	d = new(big.Int).SetBytes(th[:16])
	e = new(big.Int).SetBytes(th[16:32])
	// client: (R·X^e)^(n + d·c)
	w := new(big.Int).Add(n, new(big.Int).Mul(d, c))
	sigmaClient = refExp(refMul(R, refExp(X, e)), w)
	// server: B = N·C^d; B^r · (B^e)^x
	B := refMul(N, refExp(C, d))
	sigmaServer = refMul(refExp(B, r), refExp(refExp(B, e), x))
	return
}

func refTranscript(C, N, X, R *big.Int) []byte {
	h := sha512.New()
	h.Write([]byte("custos/jwc-kx/v1\x00"))
	h.Write(refDomain)
	for _, v := range []*big.Int{C, N, X, R} {
		h.Write(refBE(v))
	}
	return h.Sum(nil)
}

// refRekey computes both sides of a rekey.
func refRekey(n, r *big.Int, oldTicket []byte) (th []byte, sigmaClient, sigmaServer *big.Int) {
	g := big.NewInt(2)
	N, R := refExp(g, n), refExp(g, r)
	ht := sha512.Sum512(oldTicket)
	h := sha512.New()
	h.Write([]byte("custos/jwc-rekey/v1\x00"))
	h.Write(refDomain)
	h.Write(refBE(N))
	h.Write(refBE(R))
	h.Write(ht[:])
	return h.Sum(nil), refExp(R, n), refExp(N, r)
}

// refExchangeServer is the server half of refExchange alone, for benchmarks.
func refExchangeServer(c, n, x, r *big.Int) *big.Int {
	g := big.NewInt(2)
	C, N, X, R := refExp(g, c), refExp(g, n), refExp(g, x), refExp(g, r)
	th := refTranscript(C, N, X, R)
	d, e := new(big.Int).SetBytes(th[:16]), new(big.Int).SetBytes(th[16:32])
	B := refMul(N, refExp(C, d))
	return refMul(refExp(B, r), refExp(refExp(B, e), x))
}

// refExchangeClient is the client half of refExchange alone, for benchmarks.
func refExchangeClient(c, n, C, N, X, R *big.Int) *big.Int {
	th := refTranscript(C, N, X, R)
	d, e := new(big.Int).SetBytes(th[:16]), new(big.Int).SetBytes(th[16:32])
	w := new(big.Int).Add(n, new(big.Int).Mul(d, c))
	return refExp(refMul(R, refExp(X, e)), w)
}
