package hsm

import "github.com/miekg/pkcs11"

// Intercept returns ck with around run about every call: around(name) runs
// before the call and the function it returns after it. It is the one way
// to stand between the pool and a module: the pool keeps a module from
// being finalized with calls inside it, and make bench puts a network's
// latency in front of SoftHSM. (Go cannot wrap an interface's methods
// generically: one forwarding method each.)
func Intercept(ck Cryptoki, around func(call string) (after func())) Cryptoki {
	w := intercepted{ck, around}
	if _, ok := ck.(valueDeriver); ok {
		return interceptedDeriver{w}
	}
	return w
}

// interceptedDeriver is an intercepted module that keeps its one-call
// derive.
type interceptedDeriver struct{ intercepted }

func (w interceptedDeriver) DeriveValue(sh pkcs11.SessionHandle, mech uint, base pkcs11.ObjectHandle, peer []byte, size int) ([]byte, error) {
	defer w.around("DeriveValue")()
	return w.ck.(valueDeriver).DeriveValue(sh, mech, base, peer, size)
}

type intercepted struct {
	ck     Cryptoki
	around func(string) func()
}

func (w intercepted) Initialize(opts ...pkcs11.InitializeOption) error {
	defer w.around("Initialize")()
	return w.ck.Initialize(opts...)
}

func (w intercepted) Finalize() error {
	defer w.around("Finalize")()
	return w.ck.Finalize()
}

func (w intercepted) GetSlotList(tokenPresent bool) ([]uint, error) {
	defer w.around("GetSlotList")()
	return w.ck.GetSlotList(tokenPresent)
}

func (w intercepted) GetSlotInfo(slotID uint) (pkcs11.SlotInfo, error) {
	defer w.around("GetSlotInfo")()
	return w.ck.GetSlotInfo(slotID)
}

func (w intercepted) GetTokenInfo(slotID uint) (pkcs11.TokenInfo, error) {
	defer w.around("GetTokenInfo")()
	return w.ck.GetTokenInfo(slotID)
}

func (w intercepted) GetMechanismList(slotID uint) ([]*pkcs11.Mechanism, error) {
	defer w.around("GetMechanismList")()
	return w.ck.GetMechanismList(slotID)
}

func (w intercepted) OpenSession(slotID uint, flags uint) (pkcs11.SessionHandle, error) {
	defer w.around("OpenSession")()
	return w.ck.OpenSession(slotID, flags)
}

func (w intercepted) CloseSession(sh pkcs11.SessionHandle) error {
	defer w.around("CloseSession")()
	return w.ck.CloseSession(sh)
}

func (w intercepted) CloseAllSessions(slotID uint) error {
	defer w.around("CloseAllSessions")()
	return w.ck.CloseAllSessions(slotID)
}

func (w intercepted) GetSessionInfo(sh pkcs11.SessionHandle) (pkcs11.SessionInfo, error) {
	defer w.around("GetSessionInfo")()
	return w.ck.GetSessionInfo(sh)
}

func (w intercepted) Login(sh pkcs11.SessionHandle, userType uint, pin string) error {
	defer w.around("Login")()
	return w.ck.Login(sh, userType, pin)
}

func (w intercepted) Logout(sh pkcs11.SessionHandle) error {
	defer w.around("Logout")()
	return w.ck.Logout(sh)
}

func (w intercepted) GenerateKeyPair(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, public []*pkcs11.Attribute, private []*pkcs11.Attribute) (pkcs11.ObjectHandle, pkcs11.ObjectHandle, error) {
	defer w.around("GenerateKeyPair")()
	return w.ck.GenerateKeyPair(sh, m, public, private)
}

func (w intercepted) GenerateKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, temp []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	defer w.around("GenerateKey")()
	return w.ck.GenerateKey(sh, m, temp)
}

func (w intercepted) DeriveKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, base pkcs11.ObjectHandle, a []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	defer w.around("DeriveKey")()
	return w.ck.DeriveKey(sh, m, base, a)
}

func (w intercepted) EncryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	defer w.around("EncryptInit")()
	return w.ck.EncryptInit(sh, m, o)
}

func (w intercepted) Encrypt(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	defer w.around("Encrypt")()
	return w.ck.Encrypt(sh, message)
}

func (w intercepted) DecryptInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	defer w.around("DecryptInit")()
	return w.ck.DecryptInit(sh, m, o)
}

func (w intercepted) Decrypt(sh pkcs11.SessionHandle, cipher []byte) ([]byte, error) {
	defer w.around("Decrypt")()
	return w.ck.Decrypt(sh, cipher)
}

func (w intercepted) FindObjectsInit(sh pkcs11.SessionHandle, temp []*pkcs11.Attribute) error {
	defer w.around("FindObjectsInit")()
	return w.ck.FindObjectsInit(sh, temp)
}

func (w intercepted) FindObjects(sh pkcs11.SessionHandle, max int) ([]pkcs11.ObjectHandle, bool, error) {
	defer w.around("FindObjects")()
	return w.ck.FindObjects(sh, max)
}

func (w intercepted) FindObjectsFinal(sh pkcs11.SessionHandle) error {
	defer w.around("FindObjectsFinal")()
	return w.ck.FindObjectsFinal(sh)
}

func (w intercepted) GetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) ([]*pkcs11.Attribute, error) {
	defer w.around("GetAttributeValue")()
	return w.ck.GetAttributeValue(sh, o, a)
}

func (w intercepted) SetAttributeValue(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle, a []*pkcs11.Attribute) error {
	defer w.around("SetAttributeValue")()
	return w.ck.SetAttributeValue(sh, o, a)
}

func (w intercepted) DestroyObject(sh pkcs11.SessionHandle, o pkcs11.ObjectHandle) error {
	defer w.around("DestroyObject")()
	return w.ck.DestroyObject(sh, o)
}

func (w intercepted) SignInit(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, o pkcs11.ObjectHandle) error {
	defer w.around("SignInit")()
	return w.ck.SignInit(sh, m, o)
}

func (w intercepted) Sign(sh pkcs11.SessionHandle, message []byte) ([]byte, error) {
	defer w.around("Sign")()
	return w.ck.Sign(sh, message)
}

func (w intercepted) WrapKey(sh pkcs11.SessionHandle, m []*pkcs11.Mechanism, wrapping pkcs11.ObjectHandle, key pkcs11.ObjectHandle) ([]byte, error) {
	defer w.around("WrapKey")()
	return w.ck.WrapKey(sh, m, wrapping, key)
}

func (w intercepted) GenerateRandom(sh pkcs11.SessionHandle, length int) ([]byte, error) {
	defer w.around("GenerateRandom")()
	return w.ck.GenerateRandom(sh, length)
}
