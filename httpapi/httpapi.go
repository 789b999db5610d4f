// Package httpapi is the one handler style of the project's JSON HTTP APIs:
// the simulator's Bot API and control API (buko/sim) and the runner's admin
// API (runner). A handler returns (value, error); an *Error carries the HTTP
// status, a machine code and a message safe to show; an API value is the one
// place that writes answers and errors, each API family keeping its own wire
// format (the Bot API envelope, the admin API's {"error": …}).
//
// It lives below every package that serves HTTP and imports only the
// standard library, so buko/sim and runner share it without buko/sim ever
// importing runner (the import direction cmd → runner → … → buko, with
// httpapi a leaf beside buko).
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Error is a refused request: the HTTP status, a machine-readable code (the
// Bot API's "code"; empty where an API has none), a message safe to show the
// caller, and the seconds a rate-limited caller waits (0: none).
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter int
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

// Errorf is an *Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Handler is one endpoint: it returns the value to answer with, or an error
// (an *Error is shown as it is; any other error is internal). w is there for
// handlers that bound the body or set a header; a handler that wrote the
// whole answer itself returns Written.
type Handler func(w http.ResponseWriter, r *http.Request) (any, error)

// Written is the value of a handler that wrote its answer itself.
var Written = written{}

type written struct{}

// WithStatus answers Body with a status other than 200 (202 Accepted, say).
type WithStatus struct {
	Status int
	Body   any
}

// API is one API family's wire format.
type API struct {
	// ContentType of every answer.
	ContentType string
	// Indent, if set, pretty-prints answers with it.
	Indent string
	// Wrap, if set, wraps a successful value (the Bot API's {"ok":true,"result":…}).
	Wrap func(v any) any
	// ErrorBody is the body of a refused request.
	ErrorBody func(e *Error) any
	// Internal maps an error that is not an *Error (it logs it; the answer
	// must not show it). Nil: a 500 with the message "internal error".
	Internal func(r *http.Request, err error) *Error
}

// Func adapts h to an http.HandlerFunc.
func (a *API) Func(h Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := h(w, r)
		a.Answer(w, r, v, err)
	}
}

// Answer writes v (or err, when not nil) the way this API does.
func (a *API) Answer(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		a.Fail(w, r, err)
		return
	}
	if _, ok := v.(written); ok {
		return
	}
	status := http.StatusOK
	if ws, ok := v.(WithStatus); ok {
		status, v = ws.Status, ws.Body
	}
	if a.Wrap != nil {
		v = a.Wrap(v)
	}
	a.JSON(w, status, v)
}

// Fail writes err: an *Error as it is (with Retry-After when it carries
// one), any other error through Internal.
func (a *API) Fail(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		if a.Internal != nil {
			e = a.Internal(r, err)
		} else {
			e = &Error{Status: http.StatusInternalServerError, Message: "internal error"}
		}
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	a.JSON(w, e.Status, a.ErrorBody(e))
}

// JSON writes v with status: the API's content type, Cache-Control
// no-store, a Content-Length and a final newline.
func (a *API) JSON(w http.ResponseWriter, status int, v any) {
	var b []byte
	var err error
	if a.Indent != "" {
		b, err = json.MarshalIndent(v, "", a.Indent)
	} else {
		b, err = json.Marshal(v)
	}
	if err != nil {
		status = http.StatusInternalServerError
		b, err = json.Marshal(a.ErrorBody(&Error{Status: status, Code: "INTERNAL", Message: "encoding the answer failed"}))
		if err != nil {
			b = []byte(`{}`)
		}
	}
	h := w.Header()
	h.Set("Content-Type", a.ContentType)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
