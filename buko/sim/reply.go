package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"buko.app/agentrunner/buko"
)

// apiError is a refused call, answered with the Bot API error envelope. The
// control API uses the same envelope.
type apiError struct {
	status     int
	code       string
	desc       string
	retryAfter int // seconds; 0 = none
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.code, e.desc) }

func errBadRequest(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: buko.CodeBadRequest, desc: fmt.Sprintf(format, args...)}
}

func errUnauthorized(desc string) *apiError {
	return &apiError{status: http.StatusUnauthorized, code: buko.CodeUnauthorized, desc: desc}
}

func errNotFound(format string, args ...any) *apiError {
	return &apiError{status: http.StatusNotFound, code: "NOT_FOUND", desc: fmt.Sprintf(format, args...)}
}

func errConflict(format string, args ...any) *apiError {
	return &apiError{status: http.StatusConflict, code: "CONFLICT", desc: fmt.Sprintf(format, args...)}
}

func errForbidden(code, desc string) *apiError {
	return &apiError{status: http.StatusForbidden, code: code, desc: desc}
}

func errRateLimited(retryAfter int, desc string) *apiError {
	if retryAfter < 1 {
		retryAfter = 1
	}
	return &apiError{status: http.StatusTooManyRequests, code: buko.CodeRateLimited, desc: desc, retryAfter: retryAfter}
}

func errInternal(desc string) *apiError {
	return &apiError{status: http.StatusInternalServerError, code: buko.CodeInternal, desc: desc}
}

// envelope is the Bot API answer: {"ok":true,"result":…} or the error fields,
// with retry_after at the top level (ARCHITECTURE.md §3).
type envelope struct {
	OK          bool   `json:"ok"`
	Result      any    `json:"result,omitempty"`
	ErrorCode   int    `json:"error_code,omitempty"`
	Code        string `json:"code,omitempty"`
	Description string `json:"description,omitempty"`
	RetryAfter  int    `json:"retry_after,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"ok":false,"error_code":500,"code":"INTERNAL","description":"encoding the answer failed"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeResult answers a Bot API call with ok:true.
func writeResult(w http.ResponseWriter, result any) {
	writeJSON(w, http.StatusOK, envelope{OK: true, Result: result})
}

// writeError answers with the error envelope, and the Retry-After header
// when the error carries retry_after.
func writeError(w http.ResponseWriter, e *apiError) {
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.retryAfter))
	}
	writeJSON(w, e.status, envelope{OK: false, ErrorCode: e.status, Code: e.code, Description: e.desc, RetryAfter: e.retryAfter})
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
			return &apiError{status: http.StatusRequestEntityTooLarge, code: buko.CodePayloadTooLarge,
				desc: fmt.Sprintf("a JSON body may have at most %d bytes", maxJSONBody)}
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
