package exchange

import (
	"context"
	"crypto/sha512"
	"errors"

	"github.com/custos-kx/custos/internal/group"
)

// Transcript labels (SPEC §3, §7).
const (
	exchangeLabel = "custos/jwc-kx/v1"
	rekeyLabel    = "custos/jwc-rekey/v1"
)

// transcript returns TH = H(label ‖ 0x00 ‖ DomainUDF ‖ BE(C) ‖ BE(N) ‖ BE(X) ‖ BE(R)).
func transcript(c, n, x, r *group.Element) []byte {
	h := sha512.New()
	h.Write([]byte(exchangeLabel))
	h.Write([]byte{0})
	domain := group.Domain()
	h.Write(domain[:])
	for _, e := range []*group.Element{c, n, x, r} {
		h.Write(e.Bytes())
	}
	return h.Sum(nil)
}

// rekeyTranscript returns TH' = H(label ‖ 0x00 ‖ DomainUDF ‖ BE(N) ‖ BE(R) ‖ H(old ticket)).
func rekeyTranscript(n, r *group.Element, oldTicket []byte) []byte {
	th := sha512.Sum512(oldTicket)
	h := sha512.New()
	h.Write([]byte(rekeyLabel))
	h.Write([]byte{0})
	domain := group.Domain()
	h.Write(domain[:])
	h.Write(n.Bytes())
	h.Write(r.Bytes())
	h.Write(th[:])
	return h.Sum(nil)
}

// errDegenerate reports a transcript or shared secret the SPEC says to abort
// on. Neither can happen with honest keys; both are refused like a bad key.
var errDegenerate = Errorf(InvalidPublicKey, "The keys give a degenerate shared secret; generate a new nonce key and try again.")

// weights splits TH into the 128-bit weights d and e.
func weights(th []byte) (d, e []byte, err error) {
	d, e = th[0:16], th[16:32]
	if isZero(d) || isZero(e) {
		return nil, nil, errDegenerate
	}
	return d, e, nil
}

func isZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}

// serverAgree computes the server's σ = B^r · (B^e)^x with B = N·C^d.
// C^d and B^e are public; B^r is constant-time; (B^e)^x is the keystore's one
// derivation. The caller zeroes σ.
func serverAgree(ctx context.Context, ks Keystore, c, n, x, rPub *group.Element, r *group.Scalar) (sigma, th []byte, err error) {
	th = transcript(c, n, x, rPub)
	d, e, err := weights(th)
	if err != nil {
		return nil, nil, err
	}
	cd, err := group.ExpPublic(c, d)
	if err != nil {
		return nil, nil, errDegenerate
	}
	b, err := group.MulPublic(n, cd)
	if err != nil {
		return nil, nil, errDegenerate
	}
	be, err := group.ExpPublic(b, e)
	if err != nil {
		return nil, nil, errDegenerate
	}
	derived, err := ks.Derive(ctx, x.KeyID(), be)
	if err != nil {
		return nil, nil, err
	}
	bex, err := group.NewSecret(derived)
	clear(derived)
	if err != nil {
		return nil, nil, errors.New("exchange: keystore derive returned a value out of range")
	}
	defer bex.Zero()
	s := group.ExpScalar(b, r).Mul(bex)
	defer s.Zero()
	if s.Degenerate() {
		return nil, nil, errDegenerate
	}
	return s.Bytes(), th, nil
}

// clientAgree computes the client's σ = (R · X^e)^(n + d·c). The caller
// zeroes σ.
func clientAgree(c, n *group.Scalar, cPub, nPub, x, r *group.Element) (sigma, th []byte, err error) {
	th = transcript(cPub, nPub, x, r)
	d, e, err := weights(th)
	if err != nil {
		return nil, nil, err
	}
	xe, err := group.ExpPublic(x, e)
	if err != nil {
		return nil, nil, errDegenerate
	}
	base, err := group.MulPublic(r, xe)
	if err != nil {
		return nil, nil, errDegenerate
	}
	w := group.WeightedExponent(n, c, d)
	defer clear(w)
	s := group.ExpSecret(base, w)
	defer s.Zero()
	if s.Degenerate() {
		return nil, nil, errDegenerate
	}
	return s.Bytes(), th, nil
}

// rekeyAgree computes σ = peer^own for a rekey (N^r on the server, R^n on
// the client). The caller zeroes σ.
func rekeyAgree(peer *group.Element, own *group.Scalar) ([]byte, error) {
	s := group.ExpScalar(peer, own)
	defer s.Zero()
	if s.Degenerate() {
		return nil, errDegenerate
	}
	return s.Bytes(), nil
}
