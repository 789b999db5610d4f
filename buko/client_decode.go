package buko

// The client's decoding: an HTTP answer into a result or an *Error (the
// envelope, Retry-After, a short token-free excerpt of a body that is not an
// envelope) and the typed results of the methods.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

func messageResult(method string, raw json.RawMessage) (*Message, error) {
	var m Message
	if err := decodeResult(method, raw, &m); err != nil {
		return nil, err
	}
	normalizeMessage(&m)
	return &m, nil
}

func decodeResult(method string, raw json.RawMessage, v any) error {
	if len(raw) == 0 || raw[0] != '{' {
		return malformed(method, http.StatusOK, "result is not an object")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return malformed(method, http.StatusOK, "decoding result: %v", err)
	}
	return nil
}

// trueResult accepts ok:true with result true, or with no result at all (the
// ok flag already says the call succeeded; failing would invite a retry).
func trueResult(method string, raw json.RawMessage) error {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) || bytes.Equal(raw, []byte("true")) {
		return nil
	}
	if bytes.Equal(raw, []byte("false")) {
		return malformed(method, http.StatusOK, "ok:true with result false")
	}
	// Some other value (an object, say): the call succeeded; ignore it.
	return nil
}

func malformed(method string, status int, format string, args ...any) *Error {
	return &Error{Method: method, Status: status, Description: fmt.Sprintf(format, args...)}
}

// interpret turns a complete HTTP answer into a result or an *Error.
func interpret(method string, resp *http.Response, data []byte, token string) (json.RawMessage, error) {
	status := resp.StatusCode
	hdrWait := headerRetryAfter(resp.Header)
	env, err := DecodeEnvelope(data)
	if err != nil {
		e := malformed(method, status, "%s", describeBody(resp.Header.Get("Content-Type"), data, token))
		e.RetryAfter = hdrWait
		return nil, e
	}
	if env.OK && status >= 200 && status < 300 {
		return env.Result, nil
	}
	e := &Error{
		Method:      method,
		Status:      status,
		Code:        SanitizeText(scrubString(env.Code, token), 100),
		Description: SanitizeText(scrubString(env.Description, token), 500),
		RetryAfter:  max(time.Duration(env.RetryAfter)*time.Second, hdrWait),
	}
	if env.OK { // ok:true under a non-2xx status: believe the status
		e.Code = ""
		e.Description = "ok:true with a non-2xx status"
	} else if e.Code == "" {
		if e.Description == "" {
			e.Description = "ok:false without a code"
		} else {
			e.Description = "ok:false without a code: " + e.Description
		}
	}
	e.RetryAfter = min(e.RetryAfter, MaxRetryAfter)
	return nil, e
}

// describeBody says what came back instead of an envelope, with a short,
// printable, token-free excerpt.
func describeBody(ctype string, data []byte, token string) string {
	if len(bytes.TrimSpace(data)) == 0 {
		return "empty body, not a JSON envelope"
	}
	kind := "not a JSON envelope"
	if ctype != "" {
		kind = "not a JSON envelope (Content-Type " + SanitizeText(scrubString(ctype, token), 60) + ")"
	}
	return fmt.Sprintf("%s: %d bytes: \"%s\"", kind, len(data), SanitizeText(scrubString(string(data), token), 120))
}

// SanitizeText keeps at most n runes of s, valid UTF-8 and without control
// characters (newlines in an error string break log lines), for text from
// outside that goes into errors, logs and stored reasons.
func SanitizeText(s string, n int) string {
	var b strings.Builder
	count := 0
	for _, r := range s {
		if count == n {
			b.WriteString("…")
			break
		}
		if r == utf8.RuneError || r < 0x20 || r == 0x7f {
			r = ' '
		}
		b.WriteRune(r)
		count++
	}
	return b.String()
}

// headerRetryAfter reads Retry-After as seconds or an HTTP date; 0 if absent or bad.
func headerRetryAfter(h http.Header) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		return clampSeconds(n)
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return min(d.Round(time.Second), MaxRetryAfter)
		}
	}
	return 0
}

func clampSeconds(n float64) time.Duration {
	switch {
	case n != n || n <= 0: // NaN or not positive
		return 0
	case n >= MaxRetryAfter.Seconds():
		return MaxRetryAfter
	}
	return time.Duration(n * float64(time.Second))
}
