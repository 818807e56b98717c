package hsm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

// dlopenReason loads a library to learn why pkcs11.New could not: the
// dynamic linker's message, or that it has no C_GetFunctionList. It
// returns NULL when the library loads and is a PKCS#11 module.
static const char *dlopenReason(const char *path) {
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		return dlerror();
	}
	const char *reason = NULL;
	if (dlsym(h, "C_GetFunctionList") == NULL) {
		reason = "the library has no C_GetFunctionList: it is not a PKCS#11 module";
	}
	dlclose(h);
	return reason;
}
*/
import "C"

import "unsafe"

// loadFailure says why the PKCS#11 library at path does not load, in the
// dynamic linker's words ("…: cannot open shared object file: No such file
// or directory", a missing dependency, a wrong architecture).
func loadFailure(path string) string {
	p := C.CString(path)
	defer C.free(unsafe.Pointer(p))
	if r := C.dlopenReason(p); r != nil {
		return C.GoString(r)
	}
	return "the module loaded, but C_GetFunctionList failed"
}

// initArgs is the module's initialisation string in C memory, where
// C_Initialize's reserved pointer can carry it (NSS softokn reads its
// database directory there). It lives as long as the process: a module
// may keep the pointer.
func initArgs(s string) unsafe.Pointer {
	return unsafe.Pointer(C.CString(s))
}
