package group

import (
	"crypto/rand"
	"math/big"
	"testing"
)

// TestJacobiMatchesMathBig checks the divsteps Jacobi symbol against
// math/big's on random and edge values modulo p, and on random odd moduli of
// other sizes, where it must either agree or decline (gcd ≠ 1).
func TestJacobiMatchesMathBig(t *testing.T) {
	var values []*big.Int
	for i := int64(0); i < 300; i++ {
		values = append(values, big.NewInt(i), new(big.Int).Sub(p, big.NewInt(i+1)))
	}
	for i := 0; i < 2047; i++ {
		values = append(values, new(big.Int).Lsh(big.NewInt(1), uint(i)))
	}
	for i := 0; i < 3000; i++ {
		v, _ := rand.Int(rand.Reader, p)
		values = append(values, v)
	}
	for _, v := range values {
		got, ok := jacobiDivsteps(v, p)
		if v.Sign() == 0 {
			if ok {
				t.Fatalf("(0 | p): divsteps converged to %d", got)
			}
			continue
		}
		if want := big.Jacobi(v, p); !ok || got != want {
			t.Fatalf("(%x | p) = %d, %v; math/big says %d", v, got, ok, want)
		}
	}
	for i := 0; i < 3000; i++ {
		m, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), uint(8+i%2100)))
		m.SetBit(m, 0, 1)
		x, _ := rand.Int(rand.Reader, m)
		got, ok := jacobiDivsteps(x, m)
		want := big.Jacobi(x, m)
		coprime := new(big.Int).GCD(nil, nil, x, m).Cmp(big.NewInt(1)) == 0
		if ok != coprime || (ok && got != want) {
			t.Fatalf("(%x | %x) = %d, %v; math/big says %d (coprime %v)", x, m, got, ok, want, coprime)
		}
	}
}
