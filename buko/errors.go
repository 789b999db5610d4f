package buko

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Stable machine-readable error codes of the Bot API (the envelope's "code").
// Other codes may appear; callers should treat an unknown code by its HTTP status.
const (
	CodeBadRequest              = "BAD_REQUEST"
	CodeUnauthorized            = "UNAUTHORIZED"
	CodeChatForbidden           = "CHAT_FORBIDDEN"
	CodeBotBlocked              = "BOT_BLOCKED"
	CodeMethodNotAllowedForTier = "METHOD_NOT_ALLOWED_FOR_TIER"
	CodeMessageForbidden        = "MESSAGE_FORBIDDEN"
	CodeChatNotFound            = "CHAT_NOT_FOUND"
	CodeGatewayActive           = "GATEWAY_ACTIVE"
	CodeGatewayConnectionLimit  = "GATEWAY_CONNECTION_LIMIT"
	CodePayloadTooLarge         = "PAYLOAD_TOO_LARGE"
	CodeRateLimited             = "RATE_LIMITED"
	CodeInternal                = "INTERNAL"
)

// MaxRetryAfter caps the wait a server may ask for, so a garbage retry_after
// cannot park a caller for years. Daily quotas reset within a day.
const MaxRetryAfter = 24 * time.Hour

// ErrMalformedResponse matches (with errors.Is) an *Error whose HTTP answer
// was not a usable envelope: not JSON, truncated, oversized, an HTML page from a
// proxy, ok:false without a code, or ok:true without a usable result.
var ErrMalformedResponse = errors.New("buko: malformed response")

// Error is every non-ok answer of the Bot API, and every answer that could not
// be understood. Callers branch with errors.As or IsCode.
//
//   - Status is the HTTP status; 0 means the client refused the call locally
//     before sending anything (oversized media, non-image photo, missing token).
//   - Code is the envelope's code; "" when the body carried none (a proxy's 502
//     page, garbage). Such errors also match ErrMalformedResponse.
//   - RetryAfter is the wait asked for by the server (body "retry_after" or the
//     Retry-After header, whichever is larger), 0 if neither was given.
//
// Error strings carry the method name, never the token or the full URL.
type Error struct {
	Method      string
	Status      int
	Code        string
	Description string
	RetryAfter  time.Duration
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("buko: ")
	b.WriteString(e.Method)
	b.WriteString(": ")
	switch {
	case e.Status == 0:
		b.WriteString("refused locally (not sent)")
	default:
		b.WriteString("HTTP ")
		b.WriteString(strconv.Itoa(e.Status))
	}
	if e.Code != "" {
		b.WriteString(" ")
		b.WriteString(e.Code)
	} else if e.Status != 0 {
		b.WriteString(" malformed response")
	}
	if e.Description != "" {
		b.WriteString(": ")
		b.WriteString(e.Description)
	}
	if e.RetryAfter > 0 {
		b.WriteString(" (retry after ")
		b.WriteString(e.RetryAfter.String())
		b.WriteString(")")
	}
	return b.String()
}

// Is makes errors.Is(err, ErrMalformedResponse) true for an answer without a code.
func (e *Error) Is(target error) bool {
	return target == ErrMalformedResponse && e.Status != 0 && e.Code == ""
}

// Local reports whether the client refused the call before sending it.
func (e *Error) Local() bool { return e.Status == 0 }

// Malformed reports whether the server's answer could not be understood.
func (e *Error) Malformed() bool { return e.Status != 0 && e.Code == "" }

// IsCode reports whether err is (or wraps) an *Error with the given code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// RequestError is a call that got no complete HTTP answer: DNS, connect, TLS,
// reset, timeout, cancellation, or a body cut off while reading. Status is the
// HTTP status if the headers had arrived, else 0. The outcome of a send method
// that fails this way is unknown: the message may have been posted.
type RequestError struct {
	Method string
	Status int
	Err    error
}

func (e *RequestError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("buko: %s: reading HTTP %d response: %v", e.Method, e.Status, e.Err)
	}
	return fmt.Sprintf("buko: %s: POST /bot/%s: %v", e.Method, e.Method, e.Err)
}

func (e *RequestError) Unwrap() error { return e.Err }

// IsRetryable reports whether repeating the same call unchanged may succeed:
// 429 (after RetryAfter), 5xx, 408, GATEWAY_CONNECTION_LIMIT, an unreadable
// answer to a 2xx (outcome unknown), and failures to get an answer at all
// except the caller's own cancellation. Everything else (400, 401, 403, 404,
// 409 GATEWAY_ACTIVE, 413, local refusals) needs a change first.
//
// For send methods a retry after an unknown outcome may post a duplicate; the
// Bot API has no idempotency key.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var ae *Error
	if errors.As(err, &ae) {
		switch {
		case ae.Local():
			return false
		case ae.Code == CodeRateLimited || ae.Code == CodeInternal || ae.Code == CodeGatewayConnectionLimit:
			return true
		case ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusRequestTimeout || ae.Status >= 500:
			return true
		case ae.Malformed() && ae.Status >= 200 && ae.Status < 300:
			return true
		}
		return false
	}
	var re *RequestError
	if errors.As(err, &re) {
		return !errors.Is(err, context.Canceled)
	}
	return false
}
