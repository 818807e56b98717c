package group

import "math/big"

// Jacobi returns the Jacobi symbol (v | p). v is public.
func Jacobi(v *big.Int) int { return big.Jacobi(v, p) }
