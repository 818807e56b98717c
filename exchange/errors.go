package exchange

import (
	"errors"
	"fmt"
	"time"

	"github.com/custos-kx/custos/internal/group"
	"github.com/custos-kx/custos/internal/wire"
)

// Code is an error code of SPEC §2, sent as the Error member of a response.
type Code string

const (
	Malformed            Code = "Malformed"
	NoCommonAlgorithm    Code = "NoCommonAlgorithm"
	BadAuthentication    Code = "BadAuthentication"
	TicketExpired        Code = "TicketExpired"
	UnknownCredential    Code = "UnknownCredential"
	AccountDisabled      Code = "AccountDisabled"
	TooLarge             Code = "TooLarge"
	UnsupportedMediaType Code = "UnsupportedMediaType"
	InvalidPublicKey     Code = "InvalidPublicKey"
	KidMismatch          Code = "KidMismatch"
	UnsupportedDomain    Code = "UnsupportedDomain"
	RateLimited          Code = "RateLimited"
	Internal             Code = "Internal"
	KeystoreUnavailable  Code = "KeystoreUnavailable"
	RegistryUnavailable  Code = "RegistryUnavailable"
)

// Status returns the HTTP status the code is sent with.
func (c Code) Status() int {
	switch c {
	case Malformed, NoCommonAlgorithm:
		return 400
	case BadAuthentication, TicketExpired:
		return 401
	case UnknownCredential, AccountDisabled:
		return 403
	case TooLarge:
		return 413
	case UnsupportedMediaType:
		return 415
	case InvalidPublicKey, KidMismatch, UnsupportedDomain:
		return 422
	case RateLimited:
		return 429
	case KeystoreUnavailable, RegistryUnavailable:
		return 503
	default:
		return 500
	}
}

// Error is a refusal a client can act on: a SPEC code and a sentence for a
// person. Its message never holds key material or keystore details; the
// cause, if any, is kept for logs only.
type Error struct {
	Code        Code
	Description string
	// RetryAfter, for RateLimited and the 503s, is when to try again;
	// zero means a second.
	RetryAfter time.Duration
	cause      error
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Description }

// Unwrap returns the internal cause, for logs.
func (e *Error) Unwrap() error { return e.cause }

// Errorf returns an *Error with a formatted description.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Description: fmt.Sprintf(format, args...)}
}

// Response renders the error as the ExchangeResponse a client receives.
func (e *Error) Response() *wire.ExchangeResponse {
	return &wire.ExchangeResponse{Status: e.Code.Status(), StatusDescription: e.Description, Error: string(e.Code)}
}

// AsError converts any error into the *Error to send. Refusals of the
// input keep their code; the keystore's unavailability is 503
// KeystoreUnavailable; anything else is a fault of the service, 500
// Internal, which says nothing of its cause (Unwrap keeps it for the log).
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var de *wire.DecodeError
	if errors.As(err, &de) {
		return &Error{Code: Malformed, Description: "The request is not a well-formed message: " + de.Reason + ".", cause: err}
	}
	var ie *group.InvalidError
	if errors.As(err, &ie) {
		return &Error{Code: InvalidPublicKey, Description: "A public key was refused: " + ie.Reason + ".", cause: err}
	}
	if errors.Is(err, ErrKeystoreUnavailable) {
		return &Error{Code: KeystoreUnavailable, Description: "The service's key store is not available; try again shortly.", cause: err}
	}
	return &Error{Code: Internal, Description: "The service failed to answer this request; its operator can find the cause in the service's log.", cause: err}
}

// Unexpected reports whether e is a failure of the service (500) or of
// what it depends on (503) rather than a refusal of the input: the kind an
// operator must see in the log, with its cause.
func (e *Error) Unexpected() bool { return e.Code.Status() >= 500 }

// RegistryError is the refusal sent when the account registry cannot
// answer.
func RegistryError(cause error) *Error {
	return &Error{Code: RegistryUnavailable, Description: "The account registry is not available; try again shortly.", cause: cause}
}

// SharedStoreError is the refusal sent when the store the service shares
// with its replicas (the requests seen, the rate limits) cannot answer
// and the service is set to refuse what it cannot check (SPEC §2 names
// it with the registry).
func SharedStoreError(cause error) *Error {
	return &Error{Code: RegistryUnavailable, Description: "The store this service shares with its replicas is not available; try again shortly.", cause: cause}
}
