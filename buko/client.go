package buko

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Credential yields a bot token at the wire only. vault.Token implements it.
type Credential interface{ Reveal() string }

// Method names, the last element of every REST path (/bot/<method>).
const (
	MethodGetMe           = "getMe"
	MethodSendMessage     = "sendMessage"
	MethodSendChatAction  = "sendChatAction"
	MethodEditMessageText = "editMessageText"
	MethodDeleteMessage   = "deleteMessage"
	MethodSendPhoto       = "sendPhoto"
	MethodSendDocument    = "sendDocument"
	MethodGetUpdates      = "getUpdates"
)

// Timeouts and read caps applied per call (the caller's ctx may cut shorter).
const (
	// CallTimeout bounds a JSON method call.
	CallTimeout = 30 * time.Second
	// UploadTimeout bounds sendPhoto/sendDocument (up to 50 MB on the wire).
	UploadTimeout = 5 * time.Minute
	// PollGrace is added to a getUpdates timeout to form the HTTP deadline,
	// so a long poll is never cut off by the client before the server answers.
	PollGrace = 30 * time.Second
	// MaxResponseBytes caps the body read for a method other than getUpdates.
	MaxResponseBytes = 4 << 20
	// MaxUpdatesResponseBytes caps a getUpdates body (100 updates of the
	// largest allowed messages fit with a wide margin).
	MaxUpdatesResponseBytes = 32 << 20
)

// SendMessageParams is the sendMessage request.
type SendMessageParams struct {
	ChatID           string `json:"chat_id"`
	Text             string `json:"text"`
	ReplyToMessageID string `json:"reply_to_message_id,omitempty"`
	ParseMode        string `json:"parse_mode,omitempty"`
}

// EditMessageTextParams is the editMessageText request.
type EditMessageTextParams struct {
	ChatID    string `json:"chat_id"`
	MessageID string `json:"message_id"`
	Text      string `json:"text"`
	ParseMode string `json:"parse_mode,omitempty"`
}

// SendMediaParams is a sendPhoto or sendDocument request. MimeType is the
// part's Content-Type; when empty it is sniffed from Data. FileName defaults
// to "photo" or "document".
type SendMediaParams struct {
	ChatID           string `json:"chat_id"`
	Caption          string `json:"caption,omitempty"`
	ReplyToMessageID string `json:"reply_to_message_id,omitempty"`
	FileName         string `json:"-"`
	MimeType         string `json:"-"`
	Data             []byte `json:"-"`
}

// GetUpdatesParams is the getUpdates request. Offset "" and Limit 0 are
// omitted (server defaults); Timeout is the long-poll wait in seconds.
type GetUpdatesParams struct {
	Offset  UpdateID `json:"offset,omitempty"`
	Limit   int      `json:"limit,omitempty"`
	Timeout int      `json:"timeout,omitempty"`
}

// Client calls the Bot API over REST. It holds no token: every call takes the
// bot's Credential, revealed only into the Authorization header. A Client is
// safe for concurrent use by many bots.
type Client struct {
	base    string
	gateway string // "" → derived from base
	hc      *http.Client
}

// NewClient returns a client for the API at baseURL ("" → DefaultAPIURL).
// A nil hc gets a client tuned for many bots on one host, without a global
// timeout (each call has its own deadline) and without following redirects.
func NewClient(baseURL string, hc *http.Client) *Client {
	if baseURL == "" {
		baseURL = DefaultAPIURL
	}
	if hc == nil {
		hc = defaultHTTPClient()
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), hc: hc}
}

func defaultHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 128
	tr.IdleConnTimeout = 90 * time.Second
	tr.TLSHandshakeTimeout = 10 * time.Second
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// BaseURL is the REST base, without a trailing slash.
func (c *Client) BaseURL() string { return c.base }

// GatewayURL is the Bot Gateway WebSocket URL derived from the base:
// https→wss, http→ws, plus GatewayPath.
// WithGatewayURL overrides it (see WithGatewayURL).
func (c *Client) GatewayURL() string {
	if c.gateway != "" {
		return c.gateway
	}
	u := c.base
	switch {
	case strings.HasPrefix(u, "https://"):
		u = "wss://" + u[len("https://"):]
	case strings.HasPrefix(u, "http://"):
		u = "ws://" + u[len("http://"):]
	}
	return u + GatewayPath
}

// WithGatewayURL returns a copy of c that dials the Bot Gateway at u instead
// of the URL derived from the REST base (a separate Gateway host). u must be
// an absolute ws:// or wss:// URL with a host; "" returns a copy that uses the
// derived URL. c itself is unchanged; the copy shares c's HTTP client.
func (c *Client) WithGatewayURL(u string) (*Client, error) {
	cp := *c
	cp.gateway = ""
	if u == "" {
		return &cp, nil
	}
	pu, err := url.Parse(u)
	if err != nil {
		return nil, fmt.Errorf("buko: gateway URL: %w", err)
	}
	if (pu.Scheme != "ws" && pu.Scheme != "wss") || pu.Host == "" || pu.User != nil || pu.Fragment != "" {
		return nil, fmt.Errorf("buko: gateway URL %q: want ws://host/… or wss://host/… without credentials", u)
	}
	cp.gateway = u
	return &cp, nil
}

// AuthHeader is the header set for the Gateway upgrade request:
// Authorization: Bot <token>. A nil credential yields an empty header.
func AuthHeader(cred Credential) http.Header {
	h := http.Header{}
	if cred != nil {
		h.Set("Authorization", AuthScheme+" "+cred.Reveal())
	}
	return h
}

// GetMe returns the bot's identity, tier and capabilities.
func (c *Client) GetMe(ctx context.Context, cred Credential) (*Me, error) {
	raw, err := c.callJSON(ctx, cred, MethodGetMe, nil, CallTimeout, MaxResponseBytes)
	if err != nil {
		return nil, err
	}
	var me Me
	if err := decodeResult(MethodGetMe, raw, &me); err != nil {
		return nil, err
	}
	return &me, nil
}

// SendMessage posts a text message and returns it as stored.
func (c *Client) SendMessage(ctx context.Context, cred Credential, p SendMessageParams) (*Message, error) {
	raw, err := c.callJSON(ctx, cred, MethodSendMessage, p, CallTimeout, MaxResponseBytes)
	if err != nil {
		return nil, err
	}
	return messageResult(MethodSendMessage, raw)
}

// SendChatAction shows an activity indicator such as ActionTyping.
func (c *Client) SendChatAction(ctx context.Context, cred Credential, chatID, action string) error {
	body := struct {
		ChatID string `json:"chat_id"`
		Action string `json:"action"`
	}{chatID, action}
	raw, err := c.callJSON(ctx, cred, MethodSendChatAction, body, CallTimeout, MaxResponseBytes)
	if err != nil {
		return err
	}
	return trueResult(MethodSendChatAction, raw)
}

// EditMessageText changes the text of a message the bot sent. A server that
// answers true instead of the message gets the message as requested back.
func (c *Client) EditMessageText(ctx context.Context, cred Credential, p EditMessageTextParams) (*Message, error) {
	raw, err := c.callJSON(ctx, cred, MethodEditMessageText, p, CallTimeout, MaxResponseBytes)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(raw, []byte("true")) {
		return &Message{MessageID: p.MessageID, Chat: Chat{ID: p.ChatID}, Text: p.Text}, nil
	}
	return messageResult(MethodEditMessageText, raw)
}

// DeleteMessage deletes a message the bot sent.
func (c *Client) DeleteMessage(ctx context.Context, cred Credential, chatID, messageID string) error {
	body := struct {
		ChatID    string `json:"chat_id"`
		MessageID string `json:"message_id"`
	}{chatID, messageID}
	raw, err := c.callJSON(ctx, cred, MethodDeleteMessage, body, CallTimeout, MaxResponseBytes)
	if err != nil {
		return err
	}
	return trueResult(MethodDeleteMessage, raw)
}

// SendPhoto uploads an image (at most MaxPhotoBytes, an image/* MIME type).
// Both limits are checked before anything is sent: a violation is an *Error
// with Status 0 and Code CodePayloadTooLarge or CodeBadRequest.
func (c *Client) SendPhoto(ctx context.Context, cred Credential, p SendMediaParams) (*Message, error) {
	return c.sendMedia(ctx, cred, MethodSendPhoto, "photo", p)
}

// SendDocument uploads a file (at most MaxDocumentSize), checked before sending
// like SendPhoto.
func (c *Client) SendDocument(ctx context.Context, cred Credential, p SendMediaParams) (*Message, error) {
	return c.sendMedia(ctx, cred, MethodSendDocument, "document", p)
}

// GetUpdates long-polls for updates after p.Offset (which confirms every lower
// id). The HTTP deadline is p.Timeout seconds plus PollGrace, whatever the
// http.Client's own Timeout. An empty poll returns an empty slice. It is
// strict: one item that does not decode fails the call (an *Error naming the
// item). Tools and tests use it; a session uses PollUpdates, which keeps the
// rest of the batch.
func (c *Client) GetUpdates(ctx context.Context, cred Credential, p GetUpdatesParams) ([]Update, error) {
	b, err := c.PollUpdates(ctx, cred, p)
	if err != nil {
		return nil, err
	}
	if len(b.Undecodable) > 0 {
		u := b.Undecodable[0]
		return nil, malformed(MethodGetUpdates, http.StatusOK, "%d of %d updates do not decode; first: %v",
			len(b.Undecodable), len(b.Undecodable)+len(b.Updates), u)
	}
	return b.Updates, nil
}

// PollUpdates is GetUpdates read item by item: the items that decode are in
// b.Updates, in order; an item that does not is in b.Undecodable with its raw
// JSON and, when it can be found, its update_id, so the caller can keep it and
// move the offset past it. Only a result that is not a JSON array fails the
// whole call.
func (c *Client) PollUpdates(ctx context.Context, cred Credential, p GetUpdatesParams) (Batch, error) {
	wait := time.Duration(min(max(p.Timeout, 0), 3600)) * time.Second
	raw, err := c.callJSON(ctx, cred, MethodGetUpdates, p, wait+PollGrace, MaxUpdatesResponseBytes)
	if err != nil {
		return Batch{}, err
	}
	b := Batch{Updates: []Update{}}
	if len(raw) == 0 {
		return b, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return Batch{}, malformed(MethodGetUpdates, http.StatusOK, "result is not an array of updates: %v", err)
	}
	b.Updates = make([]Update, 0, len(items))
	for i, it := range items {
		u, err := DecodeUpdate(it)
		if err != nil {
			bad, ok := AsUndecodable(err)
			if !ok {
				bad = undecodable(it, err)
			}
			bad.Err = fmt.Errorf("update %d of %d: %w", i, len(items), bad.Err)
			b.Undecodable = append(b.Undecodable, bad)
			continue
		}
		b.Updates = append(b.Updates, u)
	}
	return b, nil
}

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
