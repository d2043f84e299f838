package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Error returns "code: message".
func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Code + ": " + e.Message
}

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// HTTPStatus returns the HTTP status that carries code; unknown codes are 500.
func HTTPStatus(code string) int {
	switch code {
	case CodeInvalidArgument:
		return http.StatusBadRequest
	case CodeNotFound:
		return http.StatusNotFound
	case CodeAlreadyExists, CodeUnsatisfiable, CodeConflict:
		return http.StatusConflict
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeUnauthenticated:
		return http.StatusUnauthorized
	case CodePermissionDenied:
		return http.StatusForbidden
	case CodeResourceExhausted:
		return http.StatusTooManyRequests
	default:
		return http.StatusInternalServerError
	}
}

// ErrorCode returns the code of the *Error in err's chain, or "" if there is none.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsUnauthenticated reports whether err is an API error with
// CodeUnauthenticated: the request carried no token the metaserver knows.
func IsUnauthenticated(err error) bool { return ErrorCode(err) == CodeUnauthenticated }

// IsPermissionDenied reports whether err is an API error with
// CodePermissionDenied.
func IsPermissionDenied(err error) bool { return ErrorCode(err) == CodePermissionDenied }

// IsNotFound reports whether err is an API error with CodeNotFound.
func IsNotFound(err error) bool { return ErrorCode(err) == CodeNotFound }

// IsAlreadyExists reports whether err is an API error with CodeAlreadyExists.
func IsAlreadyExists(err error) bool { return ErrorCode(err) == CodeAlreadyExists }

// IsConflict reports whether err is an API error with CodeConflict.
func IsConflict(err error) bool { return ErrorCode(err) == CodeConflict }

// IsUnsatisfiable reports whether err is an API error with CodeUnsatisfiable.
func IsUnsatisfiable(err error) bool { return ErrorCode(err) == CodeUnsatisfiable }

// IsInvalidArgument reports whether err is an API error with CodeInvalidArgument.
func IsInvalidArgument(err error) bool { return ErrorCode(err) == CodeInvalidArgument }
