package hsm

/*
#cgo CFLAGS: -I/usr/include/p11-kit-1
#cgo LDFLAGS: -ldl
#include <p11-kit/pkcs11.h>
#include <dlfcn.h>
#include <stdlib.h>

// functionList returns the function list of the module at path, which
// must already be loaded (by pkcs11.New), or NULL. The library stays
// loaded for the life of the process, as pkcs11.New leaves it.
static CK_FUNCTION_LIST_PTR functionList(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	if (h == NULL) {
		return NULL;
	}
	CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
	CK_FUNCTION_LIST_PTR fl = NULL;
	if (get == NULL || get(&fl) != CKR_OK) {
		return NULL;
	}
	return fl;
}

// deriveValue derives a generic secret of *size bytes from base and peer
// (CKM_DH_PKCS_DERIVE, or CKM_ECDH1_DERIVE with CKD_NULL), reads its value
// into out and destroys it. The template is Session.derive's. On return
// *size is the value's length; *step says which call failed: 0 the
// derive, 1 the read, 2 the destroy.
static CK_RV deriveValue(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE sh, CK_MECHANISM_TYPE type,
		CK_OBJECT_HANDLE base, unsigned char *peer, CK_ULONG peerLen,
		unsigned char *out, CK_ULONG *size, int *step) {
	CK_ECDH1_DERIVE_PARAMS ecdh = {.kdf = CKD_NULL, .pPublicData = peer, .ulPublicDataLen = peerLen};
	CK_MECHANISM mech = {type, peer, peerLen};
	if (type == CKM_ECDH1_DERIVE) {
		mech.pParameter = &ecdh;
		mech.ulParameterLen = sizeof ecdh;
	}
	CK_OBJECT_CLASS class = CKO_SECRET_KEY;
	CK_KEY_TYPE keyType = CKK_GENERIC_SECRET;
	CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
	CK_ULONG valueLen = *size;
	CK_ATTRIBUTE tmpl[] = {
		{CKA_CLASS, &class, sizeof class},
		{CKA_KEY_TYPE, &keyType, sizeof keyType},
		{CKA_TOKEN, &no, sizeof no},
		{CKA_PRIVATE, &no, sizeof no},
		{CKA_SENSITIVE, &no, sizeof no},
		{CKA_EXTRACTABLE, &yes, sizeof yes},
		{CKA_VALUE_LEN, &valueLen, sizeof valueLen},
		{CKA_ENCRYPT, &no, sizeof no},
		{CKA_DECRYPT, &no, sizeof no},
		{CKA_SIGN, &no, sizeof no},
		{CKA_VERIFY, &no, sizeof no},
		{CKA_WRAP, &no, sizeof no},
		{CKA_UNWRAP, &no, sizeof no},
		{CKA_DERIVE, &no, sizeof no},
	};
	CK_OBJECT_HANDLE h;
	*step = 0;
	CK_RV rv = fl->C_DeriveKey(sh, &mech, base, tmpl, sizeof tmpl / sizeof tmpl[0], &h);
	if (rv != CKR_OK) {
		return rv;
	}
	CK_ATTRIBUTE value = {CKA_VALUE, out, *size};
	*step = 1;
	rv = fl->C_GetAttributeValue(sh, h, &value, 1);
	*size = value.ulValueLen;
	CK_RV drv = fl->C_DestroyObject(sh, h);
	if (rv == CKR_OK && drv != CKR_OK) {
		*step = 2;
		rv = drv;
	}
	return rv;
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// binding is a module as this package calls it: pkcs11's binding for
// every function, and DeriveValue for the derive each exchange makes.
// Through pkcs11 that derive is three cgo calls, each marshalling its
// template into C memory; measured under load, the goroutine coming back
// from each call often has to wait for a processor, and the token sits
// idle meanwhile (docs/performance.md). One call does the three.
type binding struct {
	*pkcs11.Ctx
	functions C.CK_FUNCTION_LIST_PTR
}

// bind returns ctx, the module loaded from path, with DeriveValue, or ctx
// alone if its function list cannot be had a second time.
func bind(ctx *pkcs11.Ctx, path string) Cryptoki {
	p := C.CString(path)
	defer C.free(unsafe.Pointer(p))
	fl := C.functionList(p)
	if fl == nil {
		return ctx
	}
	return binding{ctx, fl}
}

// valueDeriver is a module that can derive a secret, read it and destroy
// it in one call. The binding is; modules wrapped by tests and by make
// bench are not, and derive through the three calls of Cryptoki, which
// they intercept one by one.
type valueDeriver interface {
	DeriveValue(sh pkcs11.SessionHandle, mech uint, base pkcs11.ObjectHandle, peer []byte, size int) ([]byte, error)
}

// DeriveValue derives a secret of at most size bytes with mech
// (CKM_DH_PKCS_DERIVE with peer as its parameter, or CKM_ECDH1_DERIVE with
// CKD_NULL and peer as the public data), reads it and destroys the
// derived object.
func (b binding) DeriveValue(sh pkcs11.SessionHandle, mech uint, base pkcs11.ObjectHandle, peer []byte, size int) ([]byte, error) {
	if len(peer) == 0 || size <= 0 {
		return nil, fmt.Errorf("hsm: nothing to derive from")
	}
	out := make([]byte, size)
	n := C.CK_ULONG(size)
	var step C.int
	rv := C.deriveValue(b.functions, C.CK_SESSION_HANDLE(sh), C.CK_MECHANISM_TYPE(mech), C.CK_OBJECT_HANDLE(base),
		(*C.uchar)(unsafe.Pointer(&peer[0])), C.CK_ULONG(len(peer)), (*C.uchar)(unsafe.Pointer(&out[0])), &n, &step)
	switch {
	case rv == C.CKR_BUFFER_TOO_SMALL && step == 1:
		clear(out)
		return nil, fmt.Errorf("hsm: derive returned more than %d bytes", size)
	case rv != C.CKR_OK:
		clear(out)
		return nil, pkcs11.Error(rv)
	}
	return out[:n], nil
}
