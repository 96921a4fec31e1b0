package allot

import (
	"errors"
	"fmt"
)

// Code is a stable error identity. The HTTP layer turns it into the problem
// type URI https://allot.dev/problems/<code>; clients may switch on it.
type Code string

const (
	CodeInvalid                Code = "validation-failed"
	CodeNotFound               Code = "not-found"
	CodeInsufficientCapacity   Code = "insufficient-capacity"
	CodeCapacityReservedByHold Code = "capacity-reserved-by-hold"
	CodeCapacityBelowUsage     Code = "capacity-below-usage"
	CodeHoldExpired            Code = "hold-expired"
	CodeHoldReleased           Code = "hold-released"
	CodeHoldConverted          Code = "hold-already-booked"
	CodeInvalidTransition      Code = "invalid-status-transition"
	CodeAlreadyExists          Code = "already-exists"
	CodeIdempotencyMismatch    Code = "idempotency-key-reused"
	CodeIdempotencyInFlight    Code = "idempotency-key-in-flight"
	CodeCurrencyMismatch       Code = "currency-mismatch"
	CodeUnknownCustomer        Code = "unknown-customer"
	CodeUnauthorized           Code = "unauthorized"
	// CodeOutcomeUnknown: the database did not confirm whether a write
	// committed (its connection broke during COMMIT) and could not be asked
	// since. The write may have happened.
	CodeOutcomeUnknown Code = "outcome-unknown"
)

// Error is a domain error: a refusal or bad input that the caller can fix or
// act on. Anything that is not an *Error is an internal failure.
type Error struct {
	Code   Code
	Detail string
	// Field is the JSON path of the offending input, for validation errors.
	Field string
	// Line is the index of the failing request line, or -1.
	Line int
	// Bucket is the bucket that refused, for capacity errors.
	Bucket *BucketKey
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Detail) }

// Errorf builds a domain error with no line.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...), Line: -1}
}

// Invalid builds a validation error about one field.
func Invalid(field, format string, args ...any) *Error {
	return &Error{Code: CodeInvalid, Field: field, Detail: fmt.Sprintf(format, args...), Line: -1}
}

// CodeOf returns the domain code of err, or "" for internal errors.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// ErrNotFound is returned by stores for a missing row; the engine turns it
// into a domain error that names what is missing.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned by stores when an insert hits an existing key.
var ErrConflict = errors.New("already exists")

// ErrIdempotencyLost is returned when an idempotency claim was taken over
// (it had gone stale) before this request could complete it; the request's
// transaction must roll back so that its effect happens once.
var ErrIdempotencyLost = errors.New("idempotency claim lost")

// ErrOutcomeUnknown is returned by a store's Write when it sent COMMIT but
// cannot tell whether the transaction committed. Unlike any other failed
// Write, it must not be taken as rolled back: running the requests again
// could do twice what was done, or refuse a client what it was given.
var ErrOutcomeUnknown = errors.New("commit outcome unknown")
