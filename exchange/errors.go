package exchange

import (
	"errors"
	"fmt"
	"net/http"
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
	KeystoreUnavailable  Code = "KeystoreUnavailable"
)

// Status returns the HTTP status the code is sent with.
func (c Code) Status() int {
	switch c {
	case Malformed, NoCommonAlgorithm:
		return http.StatusBadRequest
	case BadAuthentication, TicketExpired:
		return http.StatusUnauthorized
	case UnknownCredential, AccountDisabled:
		return http.StatusForbidden
	case TooLarge:
		return http.StatusRequestEntityTooLarge
	case UnsupportedMediaType:
		return http.StatusUnsupportedMediaType
	case InvalidPublicKey, KidMismatch, UnsupportedDomain:
		return http.StatusUnprocessableEntity
	case RateLimited:
		return http.StatusTooManyRequests
	default:
		return http.StatusServiceUnavailable
	}
}

// Error is a refusal a client can act on: a SPEC code and a sentence for a
// person. Its message never holds key material or keystore details; the
// cause, if any, is kept for logs only.
type Error struct {
	Code        Code
	Description string
	// RetryAfter, for RateLimited and KeystoreUnavailable, is when to try
	// again; zero means a second.
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

// AsError converts any error into the *Error to send. Errors that are not
// already refusals of the input are reported as the keystore being
// unavailable, with their cause kept for the log.
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
	return &Error{Code: KeystoreUnavailable, Description: "The service's key store is not available; try again shortly.", cause: err}
}
