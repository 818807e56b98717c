package group

import (
	"math/big"
	"math/bits"
)

// Jacobi returns the Jacobi symbol (v | p) for 0 ≤ v < p. v is public, and
// so is the running time: this is a variable-time algorithm.
//
// math/big's Jacobi runs Euclid's algorithm with a full division per step
// (about 130 µs and 750 allocations for 2048 bits). This one is the binary
// "posdivsteps" variant of Bernstein–Yang divsteps that Wuille describes for
// libsecp256k1: each step looks only at the low bits of f and g, so 62 steps
// run on single words and are then applied to the full numbers at once as a
// 2×2 matrix. About 6× faster; checked against math/big in the tests.
func Jacobi(v *big.Int) int {
	if r, ok := jacobiDivsteps(v, p); ok {
		return r
	}
	return big.Jacobi(v, p)
}

// stepsPerBatch is how many posdivsteps run on one word: each consumes at
// most one exact low bit, and the last still needs f mod 8.
const stepsPerBatch = 62

// maxBatches bounds the loop; for coprime 2048-bit inputs convergence takes
// about 75 batches.
const maxBatches = 400

// jacobiDivsteps computes (x | m) for odd m > 0 and 0 ≤ x < m. It reports
// false if it did not converge, which happens when gcd(x, m) ≠ 1.
//
// Invariant: (x | m) = (−1)^jac · (g | f), with f odd and f, g ≥ 0 never
// exceeding m. A step with g odd adds f to g, swapping them first if eta < 0
// (reciprocity: the sign flips when both are 3 mod 4); every step halves g
// (the sign flips when f is 3 or 5 mod 8). When f reaches 1, (g | 1) = 1.
func jacobiDivsteps(x, m *big.Int) (int, bool) {
	n := len(m.Bits())
	if x.Sign() < 0 || x.Cmp(m) >= 0 || m.Bit(0) == 0 {
		return 0, false
	}
	buf := make([]uint64, 5*n+1)
	f, g, nf, ng, t := buf[:n], buf[n:2*n], buf[2*n:3*n], buf[3*n:4*n], buf[4*n:]
	for i, w := range m.Bits() {
		f[i] = uint64(w)
	}
	for i, w := range x.Bits() {
		g[i] = uint64(w)
	}
	eta, jac := int64(-1), uint64(0)
	for range maxBatches {
		var u, v, q, r uint64
		eta, jac, u, v, q, r = posdivsteps(eta, jac, f[0], g[0])
		combine(nf, f, g, u, v, t)
		combine(ng, f, g, q, r, t)
		f, nf, g, ng = nf, f, ng, g
		if f[0] == 1 && isZeroWords(f[1:]) {
			return 1 - 2*int(jac&1), true
		}
		for n > 1 && f[n-1] == 0 && g[n-1] == 0 {
			n--
			f, g, nf, ng = f[:n], g[:n], nf[:n], ng[:n]
		}
	}
	return 0, false
}

// posdivsteps runs stepsPerBatch steps on the low words of f and g and
// returns the transition matrix [u v; q r], scaled by 2^stepsPerBatch so its
// entries are integers (each at most 2^stepsPerBatch).
func posdivsteps(eta int64, jac, f, g uint64) (int64, uint64, uint64, uint64, uint64, uint64) {
	u, v, q, r := uint64(1), uint64(0), uint64(0), uint64(1)
	for range stepsPerBatch {
		if g&1 == 1 {
			if eta < 0 {
				eta = -eta
				f, g, u, v, q, r = g, f, q, r, u, v
				jac ^= (f & g) >> 1
			}
			g += f
			q += u
			r += v
		}
		g >>= 1
		u <<= 1
		v <<= 1
		eta--
		jac ^= (f >> 1) ^ (f >> 2)
	}
	return eta, jac, u, v, q, r
}

// combine sets dst = (a·F + b·G) / 2^stepsPerBatch, a division that is exact
// by construction. t is scratch of len(F)+1 words. With a, b ≤ 2^62 each
// limb's sum and carry stay below 2^128, so the carry fits one word.
func combine(dst, F, G []uint64, a, b uint64, t []uint64) {
	n := len(F)
	var carry uint64
	for i := range n {
		h1, l1 := bits.Mul64(a, F[i])
		h2, l2 := bits.Mul64(b, G[i])
		lo, k1 := bits.Add64(l1, l2, 0)
		lo, k2 := bits.Add64(lo, carry, 0)
		t[i], carry = lo, h1+h2+k1+k2
	}
	t[n] = carry
	for i := range n {
		dst[i] = t[i]>>stepsPerBatch | t[i+1]<<(64-stepsPerBatch)
	}
}

func isZeroWords(w []uint64) bool {
	var acc uint64
	for _, x := range w {
		acc |= x
	}
	return acc == 0
}
