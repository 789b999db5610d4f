package agents

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"buko.app/agentrunner/permanent"
)

// HTTP protocol constants (docs/agent-protocol.md).
const (
	ProtocolVersion = 1
	HeaderTimestamp = "X-Agentrunner-Timestamp"
	HeaderSignature = "X-Agentrunner-Signature"
	HeaderBot       = "X-Agentrunner-Bot"
	SignaturePrefix = "sha256="
	// DefaultHTTPTimeout bounds one call to an agent service.
	DefaultHTTPTimeout = 10 * time.Second
	maxHTTPReplyBody   = 2 * MaxReplyBytes // base64 inflates media by 4/3
)

// HTTPConfig is the config of the http agent kind (bots.agent_config).
type HTTPConfig struct {
	URL         string `json:"url"`
	Secret      string `json:"secret"`                 // secret reference: "env:AGENTRUNNER_AGENT_SECRET_…" or a sealed value (CheckSecretRef)
	Timeout     string `json:"timeout,omitempty"`      // Go duration, default 10s
	MemoryTurns int    `json:"memory_turns,omitempty"` // turns of memory sent as context; 0 = all the workflow keeps
}

// HTTPRequest is the body POSTed to the agent service.
type HTTPRequest struct {
	Version int `json:"version"`
	Request
}

// HTTPReply is the body the agent service answers with.
type HTTPReply struct {
	Actions []Action `json:"actions"`
}

// HTTPAgent POSTs each update with bounded chat context to an agent service,
// signed with HMAC-SHA256, and performs the actions it answers with.
type HTTPAgent struct {
	cfg     HTTPConfig
	timeout time.Duration
	secret  []byte
	hc      *http.Client
	bot     Bot
	now     func() time.Time
}

// NewHTTP is the http factory.
func NewHTTP(config json.RawMessage) (Agent, error) {
	a := &HTTPAgent{timeout: DefaultHTTPTimeout, now: time.Now}
	if err := decodeStrict(config, &a.cfg); err != nil {
		return nil, err
	}
	if a.cfg.Timeout != "" {
		d, err := time.ParseDuration(a.cfg.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("timeout %q: want a positive Go duration such as 10s", truncate(a.cfg.Timeout, 40))
		}
		a.timeout = d
	}
	return a, nil
}

// Provision resolves the HMAC secret.
func (a *HTTPAgent) Provision(ctx context.Context, env Env) error {
	a.bot, a.hc = env.Bot, env.httpClient()
	s, err := requiredSecret(ctx, env, "secret", a.cfg.Secret)
	if err != nil {
		return err
	}
	if len(s) < 16 {
		return permanent.Mark(errors.New("secret must be at least 16 bytes"))
	}
	a.secret = []byte(s)
	return nil
}

// Validate checks the config: the URL, the secret reference's form, the
// timeout and memory_turns.
func (a *HTTPAgent) Validate() error {
	u, err := url.Parse(a.cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("url must be an absolute http(s) URL")
	}
	if u.User != nil {
		return errors.New("url must not carry credentials (user:password@); the request is signed with secret")
	}
	if err := CheckSecretRef("secret", a.cfg.Secret); err != nil {
		return err
	}
	if a.timeout > MaxCallTimeout {
		return fmt.Errorf("timeout %s: at most %s", a.timeout, MaxCallTimeout)
	}
	if a.cfg.MemoryTurns < 0 || a.cfg.MemoryTurns > MaxMemoryTurns {
		return fmt.Errorf("memory_turns must be within 0..%d", MaxMemoryTurns)
	}
	return nil
}

// Sign returns the signature header value for a body sent at unix time ts.
func Sign(secret []byte, ts int64, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(ts, 10)))
	m.Write([]byte("."))
	m.Write(body)
	return SignaturePrefix + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a signature header against a body and timestamp header, for
// agent services written in Go. maxSkew bounds the timestamp's age.
func Verify(secret []byte, tsHeader, sigHeader string, body []byte, now time.Time, maxSkew time.Duration) error {
	ts, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return errors.New("bad timestamp header")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > maxSkew || d < -maxSkew {
		return errors.New("timestamp outside the allowed skew")
	}
	if !hmac.Equal([]byte(Sign(secret, ts, body)), []byte(sigHeader)) {
		return errors.New("signature mismatch")
	}
	return nil
}

// Handle POSTs the update and decodes the reply.
func (a *HTTPAgent) Handle(ctx context.Context, req Request) ([]Action, error) {
	if a.cfg.MemoryTurns > 0 && len(req.Memory) > a.cfg.MemoryTurns {
		req.Memory = req.Memory[len(req.Memory)-a.cfg.MemoryTurns:]
	}
	body, err := json.Marshal(HTTPRequest{Version: ProtocolVersion, Request: req})
	if err != nil {
		return nil, permanent.Mark(fmt.Errorf("http agent: encode request: %w", err))
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, a.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return nil, permanent.Mark(fmt.Errorf("http agent: build request: %w", err))
	}
	ts := a.now().Unix()
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	hr.Header.Set(HeaderSignature, Sign(a.secret, ts, body))
	hr.Header.Set(HeaderBot, req.Bot.ID)
	resp, err := a.hc.Do(hr)
	if err != nil {
		// Network failure or timeout: the service may be back soon; a
		// refused redirect or address needs a config change.
		return nil, callError("http agent: POST to agent service", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTPReplyBody+1))
	if err != nil {
		return nil, fmt.Errorf("http agent: read reply: %w", redactURL(err))
	}
	if err := statusError("http agent", resp.StatusCode); err != nil {
		return nil, err
	}
	if len(data) > maxHTTPReplyBody {
		return nil, permanent.Mark(fmt.Errorf("http agent: malformed reply: body larger than %d bytes", maxHTTPReplyBody))
	}
	var rep HTTPReply
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		return nil, permanent.Mark(fmt.Errorf("http agent: malformed reply: %s", describeJSONError(err)))
	}
	if dec.More() {
		return nil, permanent.Mark(errors.New("http agent: malformed reply: trailing data after the JSON object"))
	}
	if rep.Actions == nil {
		return nil, permanent.Mark(errors.New(`http agent: malformed reply: "actions" is required (use [] for none)`))
	}
	if err := ValidateActions(rep.Actions); err != nil {
		return nil, permanent.Mark(fmt.Errorf("http agent: malformed reply: %w", err))
	}
	return rep.Actions, nil
}

// statusError classifies a non-2xx answer of a service: 408, 429 and 5xx are
// worth retrying, any other status needs a fix elsewhere.
func statusError(who string, status int) error {
	switch {
	case status >= 200 && status < 300:
		return nil
	case status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status >= 500:
		return fmt.Errorf("%s: service answered HTTP %d", who, status)
	}
	return permanent.Mark(fmt.Errorf("%s: service answered HTTP %d", who, status))
}

// describeJSONError names what was wrong without echoing the reply's content.
func describeJSONError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q: want %s, got %s", te.Field, te.Type, te.Value)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "empty or truncated body"
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "json: unknown field") {
		return strings.TrimPrefix(msg, "json: ")
	}
	return "not a JSON object of the expected shape"
}

// callError wraps a failed call: retryable, unless the redirect policy or
// the address deny-list refused it (a config problem).
func callError(what string, err error) error {
	err = fmt.Errorf("%s: %w", what, redactURL(err))
	if errors.Is(err, ErrRedirectRefused) || errors.Is(err, ErrAddressDenied) {
		return permanent.Mark(err)
	}
	return err
}

// redactURL drops the URL from a *url.Error (it may carry credentials or
// query secrets of the service), keeping the operation and the cause.
func redactURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}
