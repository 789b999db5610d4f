package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/httpapi"
)

// apiError is a refused call: the project's one typed API error
// (httpapi.Error), answered with the Bot API error envelope. The control API
// uses the same envelope.
type apiError = httpapi.Error

func errBadRequest(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: buko.CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

func errUnauthorized(desc string) *apiError {
	return &apiError{Status: http.StatusUnauthorized, Code: buko.CodeUnauthorized, Message: desc}
}

func errNotFound(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusNotFound, Code: "NOT_FOUND", Message: fmt.Sprintf(format, args...)}
}

func errConflict(format string, args ...any) *apiError {
	return &apiError{Status: http.StatusConflict, Code: "CONFLICT", Message: fmt.Sprintf(format, args...)}
}

func errForbidden(code, desc string) *apiError {
	return &apiError{Status: http.StatusForbidden, Code: code, Message: desc}
}

func errRateLimited(retryAfter int, desc string) *apiError {
	if retryAfter < 1 {
		retryAfter = 1
	}
	return &apiError{Status: http.StatusTooManyRequests, Code: buko.CodeRateLimited, Message: desc, RetryAfter: retryAfter}
}

func errInternal(desc string) *apiError {
	return &apiError{Status: http.StatusInternalServerError, Code: buko.CodeInternal, Message: desc}
}

// envelope is the Bot API answer: {"ok":true,"result":…} or the error fields,
// with retry_after at the top level (docs/architecture.md §3).
type envelope struct {
	OK          bool   `json:"ok"`
	Result      any    `json:"result,omitempty"`
	ErrorCode   int    `json:"error_code,omitempty"`
	Code        string `json:"code,omitempty"`
	Description string `json:"description,omitempty"`
	RetryAfter  int    `json:"retry_after,omitempty"`
}

// errorEnvelope is the body of a refused call, on both APIs.
func errorEnvelope(e *apiError) any {
	return envelope{OK: false, ErrorCode: e.Status, Code: e.Code, Description: e.Message, RetryAfter: e.RetryAfter}
}

// newWire returns the simulator's two JSON APIs: the Bot API, whose answers
// are wrapped in {"ok":true,"result":…}, and the control API, whose answers
// are bare JSON. Both refuse with the Bot API error envelope (and a
// Retry-After header when the error carries retry_after).
func newWire(log zerolog.Logger) (rest, control *httpapi.API) {
	internal := func(r *http.Request, err error) *apiError {
		log.Warn().Err(err).Str("path", r.URL.Path).Msg("sim: request failed")
		return errInternal("internal error")
	}
	rest = &httpapi.API{ContentType: "application/json", ErrorBody: errorEnvelope, Internal: internal,
		Wrap: func(v any) any { return envelope{OK: true, Result: v} }}
	control = &httpapi.API{ContentType: "application/json", ErrorBody: errorEnvelope, Internal: internal}
	return rest, control
}

// maxJSONBody bounds the body of every JSON request (Bot API and control API).
const maxJSONBody = 1 << 20

// readJSON decodes a JSON object body into v. An empty body leaves v as it is.
// With strictType (the Bot API) a present body must be declared
// application/json; the control API takes any declared type (curl -d).
// Unknown fields are tolerated, as Buko tolerates them.
func readJSON(w http.ResponseWriter, r *http.Request, strictType bool, v any) *apiError {
	r.Body = http.MaxBytesReader(w, r.Body, maxJSONBody)
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{Status: http.StatusRequestEntityTooLarge, Code: buko.CodePayloadTooLarge,
				Message: fmt.Sprintf("a JSON body may have at most %d bytes", maxJSONBody)}
		}
		return errBadRequest("reading the body: %v", err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	if ct := r.Header.Get("Content-Type"); strictType {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return errBadRequest("Content-Type must be application/json, not %q", sanitize(ct, 60))
		}
	}
	if err := json.Unmarshal(data, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return errBadRequest("field %s: wrong type (%s)", te.Field, te.Value)
		}
		return errBadRequest("invalid JSON body: %v", err)
	}
	return nil
}

// sanitize makes client-supplied text safe to echo in an error description:
// valid UTF-8, no control characters, at most n runes.
func sanitize(s string, n int) string {
	var b strings.Builder
	i := 0
	for _, r := range strings.ToValidUTF8(s, "?") {
		if i == n {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f {
			r = '?'
		}
		b.WriteRune(r)
		i++
	}
	return b.String()
}

// checkText validates a message text or caption: at most buko.MaxTextLen
// Unicode code points, valid UTF-8; required texts must also contain a
// non-space character.
func checkText(field, s string, required bool) *apiError {
	if !utf8.ValidString(s) {
		return errBadRequest("%s is not valid UTF-8", field)
	}
	if n := utf8.RuneCountInString(s); n > buko.MaxTextLen {
		return errBadRequest("%s has %d characters; at most %d are allowed", field, n, buko.MaxTextLen)
	}
	if required && strings.TrimSpace(s) == "" {
		return errBadRequest("%s must have 1 to %d characters and not be only white space", field, buko.MaxTextLen)
	}
	return nil
}

func checkParseMode(pm string) *apiError {
	if pm != "" && pm != buko.ParseModePlain {
		return errBadRequest("parse_mode %q is not supported; only %q is", sanitize(pm, 30), buko.ParseModePlain)
	}
	return nil
}
