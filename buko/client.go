package buko

// The Bot API client: its configuration and one method per Bot API call.
// The transport is in client_transport.go, the decoding of answers in
// client_decode.go.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
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
