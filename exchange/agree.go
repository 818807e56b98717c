package exchange

import (
	"context"
	"crypto/sha512"
	"errors"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/p256"
)

// Transcript labels (SPEC §3, §7, §9).
const (
	exchangeLabel     = "custos/jwc-kx/v1"
	rekeyLabel        = "custos/jwc-rekey/v1"
	exchangeLabelP256 = "custos/jwc-kx-p256/v1"
	rekeyLabelP256    = "custos/jwc-rekey-p256/v1"
)

// transcript returns TH = H(label ‖ 0x00 ‖ DomainUDF ‖ BE(C) ‖ BE(N) ‖ BE(X) ‖ BE(R))
// for group 14, H(label ‖ 0x00 ‖ C ‖ N ‖ X ‖ R) for P-256.
func transcript(c, n, x, r *PublicKey) []byte {
	h := sha512.New()
	if c.Profile() == P256 {
		h.Write([]byte(exchangeLabelP256))
		h.Write([]byte{0})
	} else {
		h.Write([]byte(exchangeLabel))
		h.Write([]byte{0})
		domain := group.Domain()
		h.Write(domain[:])
	}
	for _, k := range []*PublicKey{c, n, x, r} {
		h.Write(k.transcriptBytes())
	}
	return h.Sum(nil)
}

// rekeyTranscript returns TH' = H(label ‖ 0x00 ‖ [DomainUDF ‖] N ‖ R ‖ H(old ticket)),
// with the DomainUDF for group 14 only.
func rekeyTranscript(n, r *PublicKey, oldTicket []byte) []byte {
	th := sha512.Sum512(oldTicket)
	h := sha512.New()
	if n.Profile() == P256 {
		h.Write([]byte(rekeyLabelP256))
		h.Write([]byte{0})
	} else {
		h.Write([]byte(rekeyLabel))
		h.Write([]byte{0})
		domain := group.Domain()
		h.Write(domain[:])
	}
	h.Write(n.transcriptBytes())
	h.Write(r.transcriptBytes())
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

// serverAgree returns the server's IKM and the transcript hash of an
// exchange with the client keys c, n, the service credential x and the
// service nonce r, all of one profile: one keystore derivation with x's
// private key, the rest in Go. The caller zeroes IKM.
func serverAgree(ctx context.Context, cpu cpuSlots, ks Keystore, c, n, x *PublicKey, r *privateKey) (ikm, th []byte, err error) {
	th = transcript(c, n, x, r.pub)
	if r.ec != nil {
		ikm, err = serverAgreeP256(ctx, cpu, ks, c, n, x, r.ec)
		return ikm, th, err
	}
	ikm, err = serverAgreeDH(ctx, cpu, ks, th, c.dh, n.dh, x, r.dh)
	return ikm, th, err
}

// serverAgreeP256 computes IKM = DH(r, N) ‖ DH(x, N) ‖ DH(r, C) (SPEC §9);
// DH(x, N) is the keystore's, and the two DH(r, ·) are computed in one of
// the CPU slots, before it.
func serverAgreeP256(ctx context.Context, cpu cpuSlots, ks Keystore, c, n, x *PublicKey, r *p256.Scalar) ([]byte, error) {
	var rn, rc []byte
	err := cpu.run(ctx, func() (err error) {
		if rn, err = r.DH(n.ec); err != nil {
			return errDegenerate
		}
		if rc, err = r.DH(c.ec); err != nil {
			clear(rn)
			return errDegenerate
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer clear(rn)
	defer clear(rc)
	xn, err := ks.Derive(ctx, x.KeyID(), n)
	if err != nil {
		return nil, err
	}
	defer clear(xn)
	if len(xn) != p256.SharedSize {
		return nil, errors.New("exchange: keystore derive returned a P-256 secret that is not 32 bytes")
	}
	ikm := make([]byte, 0, 3*p256.SharedSize)
	return append(append(append(ikm, rn...), xn...), rc...), nil
}

// serverAgreeDH computes the server's σ = B^r · (B^e)^x with B = N·C^d.
// C^d and B^e are public; B^r is constant-time; (B^e)^x is the keystore's one
// derivation. The exponentiations are computed in one of the CPU slots,
// before it.
func serverAgreeDH(ctx context.Context, cpu cpuSlots, ks Keystore, th []byte, c, n *group.Element, x *PublicKey, r *group.Scalar) ([]byte, error) {
	d, e, err := weights(th)
	if err != nil {
		return nil, err
	}
	var (
		be *group.Element
		br *group.Secret
	)
	err = cpu.run(ctx, func() error {
		cd, err := group.ExpPublic(c, d)
		if err != nil {
			return errDegenerate
		}
		b, err := group.MulPublic(n, cd)
		if err != nil {
			return errDegenerate
		}
		if be, err = group.ExpPublic(b, e); err != nil {
			return errDegenerate
		}
		br = group.ExpScalar(b, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer br.Zero()
	derived, err := ks.Derive(ctx, x.KeyID(), DHKey(be))
	if err != nil {
		return nil, err
	}
	bex, err := group.NewSecret(derived)
	clear(derived)
	if err != nil {
		return nil, errors.New("exchange: keystore derive returned a value out of range")
	}
	defer bex.Zero()
	s := br.Mul(bex)
	if s.Degenerate() {
		return nil, errDegenerate
	}
	return s.Bytes(), nil
}

// clientAgree returns the client's IKM and the transcript hash of an
// exchange with its credential c and nonce n and the service's keys x, r,
// all of one profile. The caller zeroes IKM.
func clientAgree(c, n *privateKey, x, r *PublicKey) (ikm, th []byte, err error) {
	th = transcript(c.pub, n.pub, x, r)
	if c.ec != nil {
		ikm, err = clientAgreeP256(c.ec, n.ec, x.ec, r.ec)
		return ikm, th, err
	}
	ikm, err = clientAgreeDH(th, c.dh, n.dh, x.dh, r.dh)
	return ikm, th, err
}

// clientAgreeP256 computes IKM = DH(n, R) ‖ DH(n, X) ‖ DH(c, R) (SPEC §9).
func clientAgreeP256(c, n *p256.Scalar, x, r *p256.Point) ([]byte, error) {
	ikm := make([]byte, 0, 3*p256.SharedSize)
	for _, step := range []struct {
		own  *p256.Scalar
		peer *p256.Point
	}{{n, r}, {n, x}, {c, r}} {
		v, err := step.own.DH(step.peer)
		if err != nil {
			clear(ikm)
			return nil, errDegenerate
		}
		ikm = append(ikm, v...)
		clear(v)
	}
	return ikm, nil
}

// clientAgreeDH computes the client's σ = (R · X^e)^(n + d·c).
func clientAgreeDH(th []byte, c, n *group.Scalar, x, r *group.Element) ([]byte, error) {
	d, e, err := weights(th)
	if err != nil {
		return nil, err
	}
	xe, err := group.ExpPublic(x, e)
	if err != nil {
		return nil, errDegenerate
	}
	base, err := group.MulPublic(r, xe)
	if err != nil {
		return nil, errDegenerate
	}
	w := group.WeightedExponent(n, c, d)
	defer clear(w)
	s := group.ExpSecret(base, w)
	defer s.Zero()
	if s.Degenerate() {
		return nil, errDegenerate
	}
	return s.Bytes(), nil
}

// rekeyAgree computes a rekey's IKM, the DH of own with peer (server: N^r
// or DH(r, N); client: R^n or DH(n, R)). The caller zeroes it.
func rekeyAgree(peer *PublicKey, own *privateKey) ([]byte, error) {
	if own.ec != nil {
		v, err := own.ec.DH(peer.ec)
		if err != nil {
			return nil, errDegenerate
		}
		return v, nil
	}
	s := group.ExpScalar(peer.dh, own.dh)
	defer s.Zero()
	if s.Degenerate() {
		return nil, errDegenerate
	}
	return s.Bytes(), nil
}
