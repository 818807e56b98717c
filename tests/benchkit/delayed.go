package benchkit

import (
	"time"

	"github.com/miekg/pkcs11"

	"github.com/custos-kx/custos/hsm"
)

// delayed is a token as far away as a network HSM: every PKCS#11 call
// waits delay before it runs, as a round trip would. It wraps the real
// module through the hsm.Cryptoki seam, for make bench only. (Go cannot
// wrap an interface's methods generically: one forwarding method each.)
type delayed struct {
	hsm.Cryptoki
	delay time.Duration
}

func (d delayed) wait() { time.Sleep(d.delay) }

func (d delayed) Initialize(opts ...pkcs11.InitializeOption) error {
	d.wait()
	return d.Cryptoki.Initialize(opts...)
}

func (d delayed) Finalize() error {
	d.wait()
	return d.Cryptoki.Finalize()
}

func (d delayed) GetSlotList(tokenPresent bool) ([]uint, error) {
	d.wait()
	return d.Cryptoki.GetSlotList(tokenPresent)
}

func (d delayed) GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error) {
	d.wait()
	return d.Cryptoki.GetTokenInfo(slotID)
}

func (d delayed) GetMechanismList(slotID uint) ([]*pkcs11.Mechanism, error) {
	d.wait()
	return d.Cryptoki.GetMechanismList(slotID)
}

func (d delayed) OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error) {
	d.wait()
	return d.Cryptoki.OpenSession(slotID, flags)
}

func (d delayed) CloseSession(sh pkcs11.SessionHandle) error {
	d.wait()
	return d.Cryptoki.CloseSession(sh)
}

func (d delayed) CloseAllSessions(slotID uint) error {
	d.wait()
	return d.Cryptoki.CloseAllSessions(slotID)
}

func (d delayed) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	d.wait()
	return d.Cryptoki.GetSessionInfo(sh)
}

func (d delayed) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	d.wait()
	return d.Cryptoki.Login(sh, userType, pin)
}

func (d delayed) Logout(sh pkcs11.SessionHandle) error {
	d.wait()
	return d.Cryptoki.Logout(sh)
}

func (d delayed) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public []*pkcs11.Attribute, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	d.wait()
	return d.Cryptoki.GenerateKeyPair(sh, m, public, private)
}

func (d delayed) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	d.wait()
	return d.Cryptoki.GenerateKey(sh, m, temp)
}

func (d delayed) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	d.wait()
	return d.Cryptoki.DeriveKey(sh, m, base, a)
}

func (d delayed) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	d.wait()
	return d.Cryptoki.EncryptInit(sh, m, o)
}

func (d delayed) Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	d.wait()
	return d.Cryptoki.Encrypt(sh, message)
}

func (d delayed) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	d.wait()
	return d.Cryptoki.DecryptInit(sh, m, o)
}

func (d delayed) Decrypt(sh pkcs11.SessionHandle, cipher []byte) ([]byte, error) {
	d.wait()
	return d.Cryptoki.Decrypt(sh, cipher)
}

func (d delayed) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	d.wait()
	return d.Cryptoki.FindObjectsInit(sh, temp)
}

func (d delayed) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	d.wait()
	return d.Cryptoki.FindObjects(sh, max)
}

func (d delayed) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	d.wait()
	return d.Cryptoki.FindObjectsFinal(sh)
}

func (d delayed) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	d.wait()
	return d.Cryptoki.GetAttributeValue(sh, o, a)
}

func (d delayed) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	d.wait()
	return d.Cryptoki.SetAttributeValue(sh, o, a)
}

func (d delayed) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	d.wait()
	return d.Cryptoki.DestroyObject(sh, o)
}

func (d delayed) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	d.wait()
	return d.Cryptoki.SignInit(sh, m, o)
}

func (d delayed) Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	d.wait()
	return d.Cryptoki.Sign(sh, message)
}

func (d delayed) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping pkcs11.ObjectHandle, key pkcs11.ObjectHandle) ([]byte, error) {
	d.wait()
	return d.Cryptoki.WrapKey(sh, m, wrapping, key)
}

func (d delayed) GenerateRandom(sh pkcs11.SessionHandle, length int) ([]byte, error) {
	d.wait()
	return d.Cryptoki.GenerateRandom(sh, length)
}
