package sim

// Control is the typed Go client of the simulator's control API (/sim/*):
// what `agentrunner bench`, `agentrunner dev` and the tests use to create
// bots, users and chats, post as a user, read transcripts, set chaos and
// read the counters. Each method is one request; a refused request is a
// *ControlError with the status, the code and the description of the
// simulator's error envelope.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"buko.app/agentrunner/buko"
)

// ControlOptions configures a Control.
type ControlOptions struct {
	// AdminToken is the bearer token of a guarded control API (empty: none).
	AdminToken string
	// HTTPClient sends the requests (nil: a client with a 30 s timeout).
	HTTPClient *http.Client
	// UnauthorizedHint, if set, is appended to the message of a 401, saying
	// how this program's user passes the admin token.
	UnauthorizedHint string
	// BaseName names the base URL in messages about an answer that is not the
	// simulator's ("--sim-url"; empty: the URL itself).
	BaseName string
}

// Control calls one simulator's control API. It is safe for concurrent use.
type Control struct {
	base string
	opts ControlOptions
	hc   *http.Client
}

// NewControl returns the client of the simulator at baseURL (like
// http://127.0.0.1:8081; a trailing slash is dropped).
func NewControl(baseURL string, opts ControlOptions) *Control {
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: defaultControlTimeout}
	}
	if opts.BaseName == "" {
		opts.BaseName = baseURL
	}
	return &Control{base: strings.TrimRight(baseURL, "/"), opts: opts, hc: hc}
}

const defaultControlTimeout = 30 * time.Second

// WithHTTPClient returns a copy of c that sends its requests with hc (a
// client whose pool fits many concurrent calls, say).
func (c *Control) WithHTTPClient(hc *http.Client) *Control {
	cp := *c
	cp.hc = hc
	return &cp
}

// BaseURL is the simulator's base URL, without a trailing slash.
func (c *Control) BaseURL() string { return c.base }

// CloseIdleConnections closes the idle connections of the HTTP client.
func (c *Control) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// ControlError is a control-API call the simulator answered with 4xx/5xx.
type ControlError struct {
	Call        string // "POST /sim/users"
	Status      int
	Code        string
	Description string
	hint        string
}

func (e *ControlError) Error() string {
	msg := fmt.Sprintf("simulator %s: HTTP %d", e.Call, e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Description != "" {
		msg += ": " + e.Description
	}
	if e.hint != "" {
		msg += " (" + e.hint + ")"
	}
	return msg
}

// Do sends one control-API request: in (if not nil) is the JSON body, out
// (if not nil) receives the JSON answer. The typed methods below are built
// on it; tests of the API's own validation use it to send what the typed
// methods cannot.
func (c *Control) Do(ctx context.Context, method, path string, in, out any) error {
	name := method + " " + path
	if i := strings.IndexByte(name, '?'); i >= 0 {
		name = name[:i]
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("simulator %s: %w", name, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("simulator %s: %w", name, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.opts.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.opts.AdminToken)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("simulator %s: %w", name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("simulator %s: reading the answer: %w", name, err)
	}
	if resp.StatusCode >= 400 {
		ce := &ControlError{Call: name, Status: resp.StatusCode}
		var env buko.Envelope
		if json.Unmarshal(data, &env) == nil {
			ce.Code, ce.Description = env.Code, printable(env.Description, 200)
		}
		if ce.Code == "" && ce.Description == "" && resp.StatusCode == http.StatusNotFound {
			ce.Description = "not found (is " + c.opts.BaseName + " a Buko simulator?)"
		}
		if resp.StatusCode == http.StatusUnauthorized {
			ce.hint = c.opts.UnauthorizedHint
		}
		return ce
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("simulator %s: HTTP %d with an answer that is not the expected JSON (is %s a Buko simulator?): %w", name, resp.StatusCode, c.opts.BaseName, err)
	}
	return nil
}

// printable keeps printable characters of s, at most n runes.
func printable(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if n == 0 {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		b.WriteRune(r)
		n--
	}
	return b.String()
}

// ---- bots ----

// BotSettings are the fields of POST /sim/bots and PATCH /sim/bots/{id};
// a zero field keeps the simulator's default (or the bot's current value).
type BotSettings struct {
	Handle                 string `json:"handle,omitempty"` // create only
	DisplayName            string `json:"display_name,omitempty"`
	Tier                   string `json:"tier,omitempty"` // free, pro, team, official
	Official               *bool  `json:"official,omitempty"`
	GatewayConnectionLimit int    `json:"gateway_connection_limit,omitempty"`
	ConnectionPolicy       string `json:"connection_policy,omitempty"` // PolicyRejectNew, PolicyReplaceOldest
}

// CreateBot creates a bot; the answer is the only one that shows its token.
func (c *Control) CreateBot(ctx context.Context, s BotSettings) (CreatedBot, error) {
	var out CreatedBot
	err := c.Do(ctx, http.MethodPost, "/sim/bots", s, &out)
	return out, err
}

// Bots lists the bots, oldest first.
func (c *Control) Bots(ctx context.Context) ([]BotView, error) {
	var out []BotView
	err := c.Do(ctx, http.MethodGet, "/sim/bots", nil, &out)
	return out, err
}

// Bot reads one bot.
func (c *Control) Bot(ctx context.Context, botID string) (BotView, error) {
	var out BotView
	err := c.Do(ctx, http.MethodGet, "/sim/bots/"+url.PathEscape(botID), nil, &out)
	return out, err
}

// PatchBot changes a bot's settings (not its handle).
func (c *Control) PatchBot(ctx context.Context, botID string, s BotSettings) (BotView, error) {
	var out BotView
	err := c.Do(ctx, http.MethodPatch, "/sim/bots/"+url.PathEscape(botID), s, &out)
	return out, err
}

// RotateToken issues the bot a new token and returns it; the old one fails
// at once and its open Gateway sockets close with 4001.
func (c *Control) RotateToken(ctx context.Context, botID string) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	err := c.Do(ctx, http.MethodPost, "/sim/bots/"+url.PathEscape(botID)+"/rotate-token", nil, &out)
	return out.Token, err
}

// RawUpdate queues raw (every "$ID" replaced by the update's id) as the bot's
// next update, byte for byte, and returns the id.
func (c *Control) RawUpdate(ctx context.Context, botID, raw string) (string, error) {
	var out struct {
		UpdateID string `json:"update_id"`
	}
	err := c.Do(ctx, http.MethodPost, "/sim/bots/"+url.PathEscape(botID)+"/raw-updates", map[string]string{"raw": raw}, &out)
	return out.UpdateID, err
}

// ---- users ----

// CreateUser creates a user; an empty displayName takes the handle, an
// empty handle leaves the user without one.
func (c *Control) CreateUser(ctx context.Context, displayName, handle string) (UserView, error) {
	var out UserView
	err := c.Do(ctx, http.MethodPost, "/sim/users", map[string]string{"display_name": displayName, "handle": handle}, &out)
	return out, err
}

// Users lists the users, oldest first.
func (c *Control) Users(ctx context.Context) ([]UserView, error) {
	var out []UserView
	err := c.Do(ctx, http.MethodGet, "/sim/users", nil, &out)
	return out, err
}

// ---- chats ----

// StartedChat is the answer of OpenPrivateChat: the chat and the user's
// /start message.
type StartedChat struct {
	ChatID    string `json:"chat_id"`
	MessageID string `json:"message_id"`
}

// OpenPrivateChat is the /start flow: the user opens (or reopens) the
// private chat with the bot and sends /start.
func (c *Control) OpenPrivateChat(ctx context.Context, userID, botID string) (StartedChat, error) {
	var out StartedChat
	err := c.Do(ctx, http.MethodPost, "/sim/chats/private", map[string]string{"user_id": userID, "bot_id": botID}, &out)
	return out, err
}

// CreateGroup creates a group of users (the first one creates it) and bots
// and returns its chat id.
func (c *Control) CreateGroup(ctx context.Context, title string, userIDs, botIDs []string) (string, error) {
	var out struct {
		ChatID string `json:"chat_id"`
	}
	in := struct {
		Title   string   `json:"title"`
		UserIDs []string `json:"user_ids"`
		BotIDs  []string `json:"bot_ids"`
	}{title, userIDs, botIDs}
	err := c.Do(ctx, http.MethodPost, "/sim/chats/group", in, &out)
	return out.ChatID, err
}

// Chats lists the chats, filtered by a user and a bot when not empty.
func (c *Control) Chats(ctx context.Context, userID, botID string) ([]ChatView, error) {
	q := url.Values{}
	if userID != "" {
		q.Set("user_id", userID)
	}
	if botID != "" {
		q.Set("bot_id", botID)
	}
	path := "/sim/chats"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out []ChatView
	err := c.Do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Chat reads one chat.
func (c *Control) Chat(ctx context.Context, chatID string) (ChatView, error) {
	var out ChatView
	err := c.Do(ctx, http.MethodGet, "/sim/chats/"+url.PathEscape(chatID), nil, &out)
	return out, err
}

// Block: the user blocks the bot of a private chat (the bot then gets
// BOT_BLOCKED); OpenPrivateChat unblocks it.
func (c *Control) Block(ctx context.Context, chatID, userID string) error {
	return c.Do(ctx, http.MethodPost, "/sim/chats/"+url.PathEscape(chatID)+"/block", map[string]string{"user_id": userID}, nil)
}

// Stop: the user stops the bot of a private chat without blocking it.
func (c *Control) Stop(ctx context.Context, chatID, userID string) error {
	return c.Do(ctx, http.MethodPost, "/sim/chats/"+url.PathEscape(chatID)+"/stop", map[string]string{"user_id": userID}, nil)
}

// Member names who joins a group: exactly one of UserID and BotID, added by
// ByUserID (empty: the group's first user).
type Member struct {
	UserID   string `json:"user_id,omitempty"`
	BotID    string `json:"bot_id,omitempty"`
	ByUserID string `json:"by_user_id,omitempty"`
}

// AddMember adds a user or a bot to a group.
func (c *Control) AddMember(ctx context.Context, chatID string, m Member) (ChatView, error) {
	var out ChatView
	err := c.Do(ctx, http.MethodPost, "/sim/chats/"+url.PathEscape(chatID)+"/members", m, &out)
	return out, err
}

// RemoveMember removes a user or a bot (memberID) from a group, by byUserID
// (empty: the group's first user).
func (c *Control) RemoveMember(ctx context.Context, chatID, memberID, byUserID string) (ChatView, error) {
	path := "/sim/chats/" + url.PathEscape(chatID) + "/members/" + url.PathEscape(memberID)
	if byUserID != "" {
		path += "?by_user_id=" + url.QueryEscape(byUserID)
	}
	var out ChatView
	err := c.Do(ctx, http.MethodDelete, path, nil, &out)
	return out, err
}

// ---- messages ----

// Post is a user's message.
type Post struct {
	UserID           string `json:"user_id"`
	Text             string `json:"text"`
	ReplyToMessageID string `json:"reply_to_message_id,omitempty"`
}

// PostMessage posts a user's message into a chat and returns its id.
func (c *Control) PostMessage(ctx context.Context, chatID string, p Post) (string, error) {
	var out struct {
		MessageID string `json:"message_id"`
	}
	err := c.Do(ctx, http.MethodPost, "/sim/chats/"+url.PathEscape(chatID)+"/messages", p, &out)
	return out.MessageID, err
}

// Say posts text as userID into chatID and returns the message id.
func (c *Control) Say(ctx context.Context, chatID, userID, text string) (string, error) {
	return c.PostMessage(ctx, chatID, Post{UserID: userID, Text: text})
}

// EditedMessage is the answer of EditMessage.
type EditedMessage struct {
	MessageID string `json:"message_id"`
	EditDate  int64  `json:"edit_date"` // Unix seconds
}

// EditMessage is a user's edit of their message. An empty userID skips the
// author check.
func (c *Control) EditMessage(ctx context.Context, chatID, messageID, userID, text string) (EditedMessage, error) {
	var out EditedMessage
	in := map[string]string{"text": text}
	if userID != "" {
		in["user_id"] = userID
	}
	err := c.Do(ctx, http.MethodPatch, "/sim/chats/"+url.PathEscape(chatID)+"/messages/"+url.PathEscape(messageID), in, &out)
	return out, err
}

// Transcript lists a chat's messages oldest first, without deleted ones;
// a non-empty after lists only the messages after that message id.
func (c *Control) Transcript(ctx context.Context, chatID, after string) ([]TranscriptMessage, error) {
	path := "/sim/chats/" + url.PathEscape(chatID) + "/messages"
	if after != "" {
		path += "?after=" + url.QueryEscape(after)
	}
	var out []TranscriptMessage
	err := c.Do(ctx, http.MethodGet, path, nil, &out)
	return out, err
}

// Media reads the bytes and the declared MIME type of an uploaded file by
// its file_id ("media/<chat>/<id>").
func (c *Control) Media(ctx context.Context, fileID string) ([]byte, string, error) {
	name := "GET /sim/media"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/sim/"+fileID, nil)
	if err != nil {
		return nil, "", fmt.Errorf("simulator %s: %w", name, err)
	}
	if c.opts.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.opts.AdminToken)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, "", fmt.Errorf("simulator %s: %w", name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, "", fmt.Errorf("simulator %s: reading the answer: %w", name, err)
	}
	if resp.StatusCode != http.StatusOK {
		ce := &ControlError{Call: name, Status: resp.StatusCode}
		var env buko.Envelope
		if json.Unmarshal(data, &env) == nil {
			ce.Code, ce.Description = env.Code, printable(env.Description, 200)
		}
		return nil, "", ce
	}
	return data, resp.Header.Get("Content-Type"), nil
}

// ---- stats and chaos ----

// Stats reads the simulator's counters.
func (c *Control) Stats(ctx context.Context) (Stats, error) {
	var out Stats
	err := c.Do(ctx, http.MethodGet, "/sim/stats", nil, &out)
	return out, err
}

// Chaos reads the fault injection settings.
func (c *Control) Chaos(ctx context.Context) (ChaosConfig, error) {
	var out ChaosConfig
	err := c.Do(ctx, http.MethodGet, "/sim/chaos", nil, &out)
	return out, err
}

// SetChaos replaces the fault injection settings (the zero value turns it off).
func (c *Control) SetChaos(ctx context.Context, cfg ChaosConfig) (ChaosConfig, error) {
	var out ChaosConfig
	err := c.Do(ctx, http.MethodPut, "/sim/chaos", cfg, &out)
	return out, err
}
