package buko

// The client's transport: one POST per call with a per-call timeout and a
// capped read, the bot token revealed only into the Authorization header and
// scrubbed from every error.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"
)

// callJSON posts v (nil → "{}") as JSON and returns the envelope's result,
// failing when a method that must return something returned nothing.
func (c *Client) callJSON(ctx context.Context, cred Credential, method string, v any, timeout time.Duration, limit int64) (json.RawMessage, error) {
	body := []byte("{}")
	if v != nil {
		var err error
		if body, err = json.Marshal(v); err != nil {
			return nil, &Error{Method: method, Code: CodeBadRequest, Description: "encoding request: " + err.Error()}
		}
	}
	raw, err := c.do(ctx, cred, method, "application/json", body, nil, timeout, limit)
	if err != nil {
		return nil, err
	}
	if len(raw) == 0 && resultRequired(method) {
		return nil, malformed(method, http.StatusOK, "ok:true without a result")
	}
	return raw, nil
}

func resultRequired(method string) bool {
	switch method {
	case MethodSendChatAction, MethodDeleteMessage, MethodGetUpdates:
		return false // boolean results; an absent poll result is an empty poll
	}
	return true
}

// do sends one POST and interprets the answer. Exactly one of body and stream
// carries the request body (stream with its known length for uploads).
func (c *Client) do(ctx context.Context, cred Credential, method, contentType string, body []byte, stream *sizedReader, timeout time.Duration, limit int64) (json.RawMessage, error) {
	token, lerr := revealToken(method, cred)
	if lerr != nil {
		return nil, lerr
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var rd io.Reader = http.NoBody
	var length int64
	switch {
	case stream != nil:
		rd, length = stream.r, stream.n
	case body != nil:
		rd, length = bytes.NewReader(body), int64(len(body))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/bot/"+method, rd)
	if err != nil {
		// The URL is the base plus the method: no token in it.
		return nil, &RequestError{Method: method, Err: err}
	}
	req.ContentLength = length
	if length == 0 {
		req.Body = http.NoBody
	}
	req.Header.Set("Authorization", AuthScheme+" "+token)
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json")

	hc := c.hc
	if hc.Timeout > 0 && hc.Timeout < timeout {
		cp := *hc
		cp.Timeout = 0 // our ctx deadline governs; a short client timeout would cut long polls
		hc = &cp
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &RequestError{Method: method, Err: scrub(unwrapURLError(err), token)}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 && limit > 1<<20 {
		limit = 1 << 20 // an error answer is small; don't read a proxy's novel
	}
	data, rerr := readCapped(resp, limit)
	if rerr != nil {
		if errors.Is(rerr, errTooLarge) {
			e := malformed(method, resp.StatusCode, "response body larger than %d bytes", limit)
			e.RetryAfter = headerRetryAfter(resp.Header)
			return nil, e
		}
		return nil, &RequestError{Method: method, Status: resp.StatusCode, Err: scrub(rerr, token)}
	}
	return interpret(method, resp, data, token)
}

type sizedReader struct {
	r io.Reader
	n int64
}

var errTooLarge = errors.New("body too large")

func readCapped(resp *http.Response, limit int64) ([]byte, error) {
	if resp.ContentLength > limit {
		return nil, errTooLarge
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, errTooLarge
	}
	return data, nil
}

func scrubString(s, token string) string {
	if token == "" {
		return s
	}
	return strings.ReplaceAll(s, token, "[redacted]")
}

// scrubbedError keeps err's chain (errors.Is/As still work) but its text never
// carries the token.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }

func (e *scrubbedError) Unwrap() error { return e.err }

func scrub(err error, token string) error {
	if err == nil || token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return &scrubbedError{msg: scrubString(err.Error(), token), err: err}
}

// unwrapURLError drops net/http's "Post \"<url>\": " prefix: the RequestError
// names the method and path itself.
func unwrapURLError(err error) error {
	var ue interface {
		Unwrap() error
		Timeout() bool
	}
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}

// revealToken gets the token and refuses locally one that cannot be a header
// value. The error never includes the token.
func revealToken(method string, cred Credential) (string, error) {
	if cred == nil {
		return "", &Error{Method: method, Code: CodeUnauthorized, Description: "no credential"}
	}
	tok := cred.Reveal()
	if tok == "" {
		return "", &Error{Method: method, Code: CodeUnauthorized, Description: "empty bot token"}
	}
	for i := 0; i < len(tok); i++ {
		if c := tok[i]; c <= ' ' || c == 0x7f {
			return "", &Error{Method: method, Code: CodeUnauthorized, Description: "bot token contains whitespace or control characters"}
		}
	}
	return tok, nil
}
