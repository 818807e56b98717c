package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/miekg/pkcs11"
)

// Token operations. Every template sets every usage flag explicitly:
// SoftHSM's defaults are permissive (an AES key may WRAP, UNWRAP and SIGN
// unless told otherwise). Callers name keys by kind and CKA_ID; the
// PKCS#11 classes, types and attributes stay in this package.

// Object is a handle to a token object. It is valid while the session's
// Epoch is unchanged.
type Object pkcs11.ObjectHandle

// KeyKind is a kind of key object Custos keeps in a token.
type KeyKind int

const (
	DHPrivateKey KeyKind = iota + 1
	DHPublicKey
	AESKey
	ECPrivateKey
	ECPublicKey
	HMACKey
)

func (k KeyKind) template() []*pkcs11.Attribute {
	var class, keyType uint
	switch k {
	case DHPrivateKey:
		class, keyType = pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_DH
	case DHPublicKey:
		class, keyType = pkcs11.CKO_PUBLIC_KEY, pkcs11.CKK_DH
	case AESKey:
		class, keyType = pkcs11.CKO_SECRET_KEY, pkcs11.CKK_AES
	case ECPrivateKey:
		class, keyType = pkcs11.CKO_PRIVATE_KEY, pkcs11.CKK_EC
	case ECPublicKey:
		class, keyType = pkcs11.CKO_PUBLIC_KEY, pkcs11.CKK_EC
	case HMACKey:
		class, keyType = pkcs11.CKO_SECRET_KEY, pkcs11.CKK_GENERIC_SECRET
	default:
		panic("hsm: unknown key kind")
	}
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
	}
}

// KeyObject is a key found in the token, with the label and CKA_ID it was
// stored under.
type KeyObject struct {
	Object Object
	Label  string
	ID     []byte
}

// FindKeys lists the keys of a kind that have a label and an id.
func (s *Session) FindKeys(kind KeyKind) ([]KeyObject, error) {
	hs, err := s.findObjects(kind.template())
	if err != nil {
		return nil, err
	}
	var out []KeyObject
	for _, h := range hs {
		attrs, err := s.t.ck.GetAttributeValue(s.s.h, h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
			pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		})
		if err != nil || len(attrs[0].Value) == 0 || len(attrs[1].Value) == 0 {
			continue // not one of ours, or not readable: not a key to use
		}
		out = append(out, KeyObject{Object: Object(h), Label: string(attrs[0].Value), ID: attrs[1].Value})
	}
	return out, nil
}

// FindKey returns the one key of a kind with CKA_ID id, or ErrObjectNotFound.
func (s *Session) FindKey(kind KeyKind, id []byte) (Object, error) {
	h, err := s.findOne(append(kind.template(), pkcs11.NewAttribute(pkcs11.CKA_ID, id)))
	return Object(h), err
}

// DestroyKeys deletes every key of a kind with CKA_ID id.
func (s *Session) DestroyKeys(kind KeyKind, id []byte) error {
	hs, err := s.findObjects(append(kind.template(), pkcs11.NewAttribute(pkcs11.CKA_ID, id)))
	if err != nil {
		return err
	}
	for _, h := range hs {
		if err := s.t.ck.DestroyObject(s.s.h, h); err != nil {
			return err
		}
	}
	return nil
}

// PublicValue returns a DH public key's CKA_VALUE, y big-endian.
func (s *Session) PublicValue(o Object) ([]byte, error) {
	return s.attribute(pkcs11.ObjectHandle(o), pkcs11.CKA_VALUE)
}

// PublicPoint returns an EC public key's point in its uncompressed form.
func (s *Session) PublicPoint(o Object) ([]byte, error) {
	v, err := s.attribute(pkcs11.ObjectHandle(o), pkcs11.CKA_EC_POINT)
	if err != nil {
		return nil, err
	}
	return unwrapPoint(v)
}

// unwrapPoint takes the point out of CKA_EC_POINT, which PKCS#11 defines
// as the DER OCTET STRING of the encoded point; some tokens store the bare
// point instead.
func unwrapPoint(v []byte) ([]byte, error) {
	switch {
	case len(v) == P256PointSize && v[0] == 0x04:
		return v, nil
	case len(v) == P256PointSize+2 && v[0] == 0x04 && v[1] == P256PointSize:
		return v[2:], nil
	}
	return nil, fmt.Errorf("hsm: CKA_EC_POINT is %d bytes, neither a P-256 point nor one in an OCTET STRING", len(v))
}

// P256PointSize is the length of an uncompressed P-256 point.
const P256PointSize = 65

// prime256v1 is CKA_EC_PARAMS for P-256: the DER of its named-curve OID
// 1.2.840.10045.3.1.7.
var prime256v1 = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// GenerateECKeyPair creates a P-256 key pair in the token. The private key
// can only derive: it is sensitive, not extractable, and has no other
// usage. It returns the public point (uncompressed) and both objects.
func (s *Session) GenerateECKeyPair(label string, id []byte) (point []byte, pubObj, privObj Object, err error) {
	pub, priv, err := s.generateKeyPair(pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKK_EC, label, id,
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, prime256v1)}, nil)
	if err != nil {
		return nil, 0, 0, err
	}
	point, err = s.PublicPoint(pub)
	return point, pub, priv, err
}

// generateKeyPair creates a key pair for key agreement in the token: the
// public key can do nothing, the private key can only derive (sensitive,
// not extractable, not modifiable). pubExtra and privExtra are the key
// type's own attributes (its domain parameters).
func (s *Session) generateKeyPair(mech, keyType uint, label string, id []byte, pubExtra, privExtra []*pkcs11.Attribute) (pub, priv Object, err error) {
	pubT := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, pubExtra...)
	privT := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, privExtra...)
	pubH, privH, err := s.t.ck.GenerateKeyPair(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pubT, privT)
	return Object(pubH), Object(privH), err
}

// DHParams are the domain parameters of a Diffie-Hellman key.
type DHParams struct {
	Prime []byte // big-endian
	Base  []byte // big-endian
	// PrivateBits is CKA_VALUE_BITS, the private exponent's length.
	PrivateBits int
}

// GenerateDHKeyPair creates a Diffie-Hellman key pair in the token. The
// private key can only derive: it is sensitive, not extractable, and has no
// other usage. It returns the public value (big-endian) and both objects.
func (s *Session) GenerateDHKeyPair(p DHParams, label string, id []byte) (public []byte, pubObj, privObj Object, err error) {
	pub, priv, err := s.generateKeyPair(pkcs11.CKM_DH_PKCS_KEY_PAIR_GEN, pkcs11.CKK_DH, label, id,
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_PRIME, p.Prime), pkcs11.NewAttribute(pkcs11.CKA_BASE, p.Base)},
		[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE_BITS, p.PrivateBits)})
	if err != nil {
		return nil, 0, 0, err
	}
	public, err = s.attribute(pkcs11.ObjectHandle(pub), pkcs11.CKA_VALUE)
	return public, pub, priv, err
}

// DeriveDH returns peer^x mod p for the private key priv as exactly size
// big-endian bytes. The token does not validate peer: the caller must. The
// derived secret exists in the token only as a session object, destroyed
// before this returns. The caller zeroes the result.
func (s *Session) DeriveDH(priv Object, peer []byte, size int) ([]byte, error) {
	return s.derive(priv, pkcs11.CKM_DH_PKCS_DERIVE, peer, size)
}

// DeriveECDH returns the 32-byte x-coordinate of x·peer for the P-256
// private key priv (CKM_ECDH1_DERIVE with CKD_NULL) and the uncompressed
// point peer, which the caller must have validated. As with DeriveDH, the
// derived object is destroyed before this returns; the caller zeroes the
// result.
func (s *Session) DeriveECDH(priv Object, peer []byte) ([]byte, error) {
	return s.derive(priv, pkcs11.CKM_ECDH1_DERIVE, peer, 32)
}

// derive runs a key-agreement mechanism (CKM_DH_PKCS_DERIVE or
// CKM_ECDH1_DERIVE) with peer into a session object of size bytes, reads
// its value and destroys it: in one call where the module can
// (binding.DeriveValue, whose C template is this one), else in three.
func (s *Session) derive(priv Object, mech uint, peer []byte, size int) ([]byte, error) {
	var v []byte
	var err error
	if d, ok := s.t.ck.(valueDeriver); ok {
		v, err = d.DeriveValue(s.s.h, mech, pkcs11.ObjectHandle(priv), peer, size)
	} else {
		v, err = s.deriveInSteps(priv, mech, peer, size)
	}
	if err != nil {
		return nil, err
	}
	if len(v) > size {
		clear(v)
		return nil, fmt.Errorf("hsm: derive returned %d bytes, more than %d", len(v), size)
	}
	if len(v) == size {
		return v, nil
	}
	out := make([]byte, size) // a DH secret's leading zeros, dropped by some tokens
	copy(out[size-len(v):], v)
	clear(v)
	return out, nil
}

// deriveInSteps is derive as C_DeriveKey, C_GetAttributeValue and
// C_DestroyObject through Cryptoki.
func (s *Session) deriveInSteps(priv Object, mech uint, peer []byte, size int) ([]byte, error) {
	m := pkcs11.NewMechanism(mech, peer)
	if mech == pkcs11.CKM_ECDH1_DERIVE {
		m = pkcs11.NewMechanism(mech, pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer))
	}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
		// SoftHSM needs these two to hand the value back.
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, size),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
	}
	ck := s.t.ck
	h, err := ck.DeriveKey(s.s.h, []*pkcs11.Mechanism{m}, pkcs11.ObjectHandle(priv), tmpl)
	if err != nil {
		return nil, err
	}
	v, err := s.attribute(h, pkcs11.CKA_VALUE)
	if derr := ck.DestroyObject(s.s.h, h); err == nil {
		err = derr
	}
	if err != nil {
		clear(v)
		return nil, err
	}
	return v, nil
}

// GenerateAESKey creates a 256-bit AES key in the token that can only
// encrypt and decrypt: sensitive, not extractable, no wrap, unwrap, sign or
// derive.
func (s *Session) GenerateAESKey(label string, id []byte) (Object, error) {
	return s.generateSecret(pkcs11.CKM_AES_KEY_GEN, pkcs11.CKK_AES, label, id, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT)
}

// GenerateHMACKey creates a 256-bit generic secret in the token that can
// only sign (HMAC-SHA-256): sensitive, not extractable, no encrypt,
// decrypt, wrap, unwrap, verify or derive. Tags are compared by the
// caller, not by C_Verify, whose answer to a wrong tag differs by vendor.
func (s *Session) GenerateHMACKey(label string, id []byte) (Object, error) {
	return s.generateSecret(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKK_GENERIC_SECRET, label, id, pkcs11.CKA_SIGN)
}

// generateSecret creates a 256-bit secret key in the token, sensitive, not
// extractable, not modifiable, whose only usages are those given: every
// other usage flag is set false, since SoftHSM's defaults are permissive.
func (s *Session) generateSecret(mech, keyType uint, label string, id []byte, usages ...uint) (Object, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}
	for _, usage := range []uint{pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY, pkcs11.CKA_DERIVE} {
		tmpl = append(tmpl, pkcs11.NewAttribute(usage, slices.Contains(usages, usage)))
	}
	h, err := s.t.ck.GenerateKey(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, tmpl)
	return Object(h), err
}

// HMACSize is the length of an HMAC-SHA-256 tag.
const HMACSize = 32

// SignHMAC returns HMAC-SHA-256(key, data), made in the token.
func (s *Session) SignHMAC(key Object, data []byte) ([]byte, error) {
	ck := s.t.ck
	if err := ck.SignInit(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, pkcs11.ObjectHandle(key)); err != nil {
		return nil, err
	}
	tag, err := ck.Sign(s.s.h, data)
	if err == nil && len(tag) != HMACSize {
		return nil, fmt.Errorf("hsm: HMAC-SHA-256 returned %d bytes", len(tag))
	}
	return tag, err
}

// CBCIVSize is the IV of AES-CBC.
const CBCIVSize = 16

// EncryptCBC encrypts plaintext with AES-CBC and PKCS#7 padding
// (CKM_AES_CBC_PAD) under key with the caller's 16-byte IV. CBC alone does
// not authenticate: the caller MACs the result.
func (s *Session) EncryptCBC(key Object, iv, plaintext []byte) ([]byte, error) {
	if len(iv) != CBCIVSize {
		return nil, fmt.Errorf("hsm: CBC IV must be %d bytes, not %d", CBCIVSize, len(iv))
	}
	ck := s.t.ck
	if err := ck.EncryptInit(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}, pkcs11.ObjectHandle(key)); err != nil {
		return nil, err
	}
	out, err := ck.Encrypt(s.s.h, plaintext)
	if err == nil && len(out) != (len(plaintext)/CBCIVSize+1)*CBCIVSize {
		return nil, fmt.Errorf("hsm: CBC-PAD returned %d bytes for %d of plaintext", len(out), len(plaintext))
	}
	return out, err
}

// DecryptCBC reverses EncryptCBC; the caller has authenticated the
// ciphertext first, so a padding error is a fault, not an answer to give.
// The caller zeroes the plaintext.
func (s *Session) DecryptCBC(key Object, iv, ciphertext []byte) ([]byte, error) {
	if len(iv) != CBCIVSize || len(ciphertext) == 0 || len(ciphertext)%CBCIVSize != 0 {
		return nil, ErrAuthentication
	}
	ck := s.t.ck
	if err := ck.DecryptInit(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}, pkcs11.ObjectHandle(key)); err != nil {
		return nil, err
	}
	return ck.Decrypt(s.s.h, ciphertext)
}

// GCM sizes this package insists on, because tokens do not: SoftHSM
// accepts an empty IV and a 0-bit tag.
const (
	GCMIVSize  = 12
	GCMTagSize = 16
)

// ErrAuthentication is returned by OpenGCM when the ciphertext does not
// authenticate. It is a refusal of the input, not a token fault.
var ErrAuthentication = errors.New("hsm: ciphertext does not authenticate")

// SealGCM encrypts plaintext with AES-GCM under key, with the caller's
// 12-byte IV and a 128-bit tag, and returns ciphertext ‖ tag.
func (s *Session) SealGCM(key Object, iv, aad, plaintext []byte) ([]byte, error) {
	if len(iv) != GCMIVSize {
		return nil, fmt.Errorf("hsm: GCM IV must be %d bytes, not %d", GCMIVSize, len(iv))
	}
	params := pkcs11.NewGCMParams(iv, aad, GCMTagSize*8)
	defer params.Free()
	ck := s.t.ck
	if err := ck.EncryptInit(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, pkcs11.ObjectHandle(key)); err != nil {
		return nil, err
	}
	out, err := ck.Encrypt(s.s.h, plaintext)
	if err != nil {
		return nil, err
	}
	if len(out) != len(plaintext)+GCMTagSize {
		return nil, fmt.Errorf("hsm: GCM seal returned %d bytes for %d of plaintext", len(out), len(plaintext))
	}
	return out, nil
}

// OpenGCM decrypts ciphertext ‖ tag. A ciphertext that does not
// authenticate gives ErrAuthentication, whatever code the token answers
// it with (gcmTagFailures). The caller zeroes the plaintext.
func (s *Session) OpenGCM(key Object, iv, aad, sealed []byte) ([]byte, error) {
	if len(iv) != GCMIVSize || len(sealed) < GCMTagSize {
		return nil, ErrAuthentication
	}
	params := pkcs11.NewGCMParams(iv, aad, GCMTagSize*8)
	defer params.Free()
	ck := s.t.ck
	if err := ck.DecryptInit(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, pkcs11.ObjectHandle(key)); err != nil {
		return nil, err
	}
	out, err := ck.Decrypt(s.s.h, sealed)
	if err != nil && gcmTagFailure(err) {
		return nil, ErrAuthentication
	}
	return out, err
}

// findObjects returns the handles of every object matching the template.
func (s *Session) findObjects(template []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	ck := s.t.ck
	if err := ck.FindObjectsInit(s.s.h, template); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := ck.FindObjects(s.s.h, 64)
		if err != nil {
			ck.FindObjectsFinal(s.s.h)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	return all, ck.FindObjectsFinal(s.s.h)
}

// findOne returns the handle of the one object matching the template, or
// ErrObjectNotFound.
func (s *Session) findOne(template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	hs, err := s.findObjects(template)
	switch {
	case err != nil:
		return 0, err
	case len(hs) == 0:
		return 0, ErrObjectNotFound
	case len(hs) > 1:
		return 0, fmt.Errorf("hsm: %d objects match where one was expected", len(hs))
	}
	return hs[0], nil
}

// attribute reads one attribute of an object.
func (s *Session) attribute(h pkcs11.ObjectHandle, typ uint) ([]byte, error) {
	attrs, err := s.t.ck.GetAttributeValue(s.s.h, h, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
	if err != nil {
		return nil, err
	}
	return attrs[0].Value, nil
}

// Capability is a family of operations Custos needs of a token.
type Capability int

const (
	// DH is group-14 key generation and derivation (CKM_DH_PKCS_*).
	DH Capability = iota + 1
	// ECDH is P-256 key generation and CKM_ECDH1_DERIVE.
	ECDH
	// GCM is AES key generation and AES-GCM.
	GCM
	// CBCHMAC is AES-CBC-PAD and HMAC-SHA-256 with generic secrets.
	CBCHMAC
)

func (c Capability) mechanisms() []uint {
	switch c {
	case DH:
		return []uint{pkcs11.CKM_DH_PKCS_KEY_PAIR_GEN, pkcs11.CKM_DH_PKCS_DERIVE}
	case ECDH:
		return []uint{pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKM_ECDH1_DERIVE}
	case GCM:
		return []uint{pkcs11.CKM_AES_KEY_GEN, pkcs11.CKM_AES_GCM}
	case CBCHMAC:
		return []uint{pkcs11.CKM_AES_KEY_GEN, pkcs11.CKM_AES_CBC_PAD, pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKM_SHA256_HMAC}
	}
	panic("hsm: unknown capability")
}

// SelfTestGCM seals and opens a message with a throwaway session key: a
// token can list AES-GCM and still get it wrong (NSS's size query for a
// seal leaves out the tag, and the seal then fails).
func (s *Session) SelfTestGCM() error {
	ck := s.t.ck
	key, err := ck.GenerateKey(s.s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
	})
	if err != nil {
		return err
	}
	defer ck.DestroyObject(s.s.h, key)
	iv, msg := make([]byte, GCMIVSize), []byte("custos GCM self-test message")
	sealed, err := s.SealGCM(Object(key), iv, []byte("aad"), msg)
	if err != nil {
		return fmt.Errorf("sealing: %w", err)
	}
	opened, err := s.OpenGCM(Object(key), iv, []byte("aad"), sealed)
	if err != nil {
		return fmt.Errorf("opening: %w", err)
	}
	if !bytes.Equal(opened, msg) {
		return errors.New("the message opened differs from the one sealed")
	}
	sealed[0] ^= 1
	if _, err := s.OpenGCM(Object(key), iv, []byte("aad"), sealed); !errors.Is(err, ErrAuthentication) {
		return fmt.Errorf("a tampered ciphertext was not refused as unauthentic: %v", err)
	}
	return nil
}

// Can reports whether the token lists every mechanism of c.
func (s *Session) Can(c Capability) (bool, error) {
	mechs, err := s.t.ck.GetMechanismList(s.t.slot)
	if err != nil {
		return false, err
	}
	listed := map[uint]bool{}
	for _, m := range mechs {
		listed[m.Mechanism] = true
	}
	for _, m := range c.mechanisms() {
		if !listed[m] {
			return false, nil
		}
	}
	return true, nil
}
