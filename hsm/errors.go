package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/custos-kx/custos/exchange"
)

// recovery is what the pool does after an operation failed.
type recovery int

const (
	keep       recovery = iota // the error belongs to the operation; the session is fine
	newSession                 // the session is gone: discard it and retry on another
	transient                  // the call failed without saying why: try it once more
	relogin                    // the application was logged out: log in and retry
	reinit                     // the module was finalized: initialize it and retry
	refind                     // an object handle went stale: find objects again and retry
	down                       // the token is unreachable: fail fast until it answers again
)

// ErrObjectNotFound is returned by FindOne. Do treats it like a stale
// handle: it checks the login (a logged-out application cannot see its
// private objects) and tries once more before returning it.
var ErrObjectNotFound = errors.New("hsm: object not found")

func classify(err error) recovery {
	if errors.Is(err, ErrObjectNotFound) {
		return refind
	}
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return keep
	}
	switch e {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED:
		return newSession
	case pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_FUNCTION_FAILED:
		// SoftHSM answers so when the session is closed under a running
		// call (C_CloseAllSessions from another thread).
		return transient
	case pkcs11.CKR_USER_NOT_LOGGED_IN:
		return relogin
	case pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED:
		return reinit
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return refind
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_DEVICE_MEMORY:
		return down
	}
	return keep
}

// reason names an error for the errors metric without revealing anything
// but its class.
func reason(err error) string {
	var e pkcs11.Error
	switch {
	case errors.As(err, &e):
		s := e.Error() // "pkcs11: 0x5: CKR_GENERAL_ERROR"
		for i := len(s) - 1; i >= 0; i-- {
			if s[i] == ' ' {
				return s[i+1:]
			}
		}
		return s
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, exchange.ErrKeystoreUnavailable):
		return "unavailable"
	}
	return "other"
}

// unavailable wraps the cause of an outage in the one sentinel callers
// test for, exchange.ErrKeystoreUnavailable: the token is unreachable, its
// sessions keep failing, it has no session to lend in time, or the pool is
// closed. Callers answer 503 and retry later; the cause is for logs only.
func unavailable(cause error) error {
	if errors.Is(cause, exchange.ErrKeystoreUnavailable) {
		return cause
	}
	return fmt.Errorf("%w: %v", exchange.ErrKeystoreUnavailable, cause)
}

// gcmTagFailures are the codes tokens answer a GCM ciphertext that does not
// authenticate with: a refusal of the input (an invalid ticket, 401), not
// a token fault. Each vendor's is here, in one table.
var gcmTagFailures = map[uint]string{
	pkcs11.CKR_GENERAL_ERROR:            "SoftHSM 2.6",
	pkcs11.CKR_ENCRYPTED_DATA_INVALID:   "NSS softokn 3.87",
	pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE: "a ciphertext shorter than the tag, on several tokens",
	0x00000035:                          "PKCS#11 3.0's CKR_AEAD_DECRYPT_FAILED",
}

// gcmTagFailure reports whether err is a GCM open's answer to a
// ciphertext that does not authenticate. (CBC tickets' tags are compared
// in Go, not by C_Verify, which answers a wrong HMAC with
// CKR_SIGNATURE_INVALID on SoftHSM and opencryptoki and CKR_DEVICE_ERROR,
// a fault code, on NSS.)
func gcmTagFailure(err error) bool {
	var e pkcs11.Error
	if !errors.As(err, &e) {
		return false
	}
	_, ok := gcmTagFailures[uint(e)]
	return ok
}

// Is reports whether err is the PKCS#11 return value code.
func Is(err error, code uint) bool {
	var e pkcs11.Error
	return errors.As(err, &e) && uint(e) == code
}
