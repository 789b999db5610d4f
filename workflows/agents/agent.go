// Package agents owns the bots' agent logic as pluggable parts: the Agent
// interface, the optional Provision/Validate/Cleanup life-cycle, the action
// vocabulary an agent answers with, and the built-in kinds chosen per bot by
// bots.agent: echo, http (a signed POST to an agent service) and openai (an
// OpenAI-compatible chat-completions endpoint).
//
// Agents run inside a Temporal activity: they may do I/O, must honour ctx, and
// mark errors that retrying cannot fix with permanent.Mark. They never see a bot token.
package agents

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/permanent"
)

// Action kinds an agent may answer with.
const (
	ActionSend     = "send"     // sendMessage
	ActionEdit     = "edit"     // editMessageText
	ActionDelete   = "delete"   // deleteMessage
	ActionTyping   = "typing"   // sendChatAction (any documented action; default "typing")
	ActionPhoto    = "photo"    // sendPhoto, bytes inline
	ActionDocument = "document" // sendDocument, bytes inline
)

// Limits on one agent reply. Replies travel through Temporal history, whose
// payloads are capped at 2 MiB, so media inline in a reply is bounded well below.
const (
	MaxActions      = 20
	MaxReplyBytes   = 1 << 20 // total encoded size of one reply
	MaxFileNameLen  = 255
	MaxMemoryTurns  = 200
	DefaultChatKind = buko.ActionTyping
)

// Action is one thing the agent wants done in the chat, in order.
type Action struct {
	Type             string `json:"type"`
	Text             string `json:"text,omitempty"`                // send, edit
	ReplyToMessageID string `json:"reply_to_message_id,omitempty"` // send, photo, document
	MessageID        string `json:"message_id,omitempty"`          // edit, delete
	ChatAction       string `json:"action,omitempty"`              // typing: one of the documented chat actions
	Caption          string `json:"caption,omitempty"`             // photo, document
	FileName         string `json:"file_name,omitempty"`           // photo, document
	MimeType         string `json:"mime_type,omitempty"`           // photo, document
	Data             []byte `json:"data,omitempty"`                // photo, document (base64 in JSON)
}

// Turn is one entry of a chat's bounded conversation memory.
type Turn struct {
	Role string `json:"role"` // "user" or "assistant"
	Text string `json:"text"`
}

// Conversation roles.
const (
	RoleUser      = "user"
	RoleAssistant = "assistant"
)

// Bot describes the bot an agent speaks for.
type Bot struct {
	ID          string `json:"id"`
	Handle      string `json:"handle,omitempty"`
	DisplayName string `json:"display_name,omitempty"`
}

// Request is one update for an agent to handle.
type Request struct {
	Bot    Bot         `json:"bot"`
	ChatID string      `json:"chat_id"`
	Update buko.Update `json:"update"`
	Memory []Turn      `json:"memory,omitempty"`
	// Typing shows a chat action in the chat now (quota-limited, best effort).
	// Nil when the caller offers none.
	Typing func(ctx context.Context) error `json:"-"`
}

// Agent handles one update and answers with the actions to perform, in order.
type Agent interface {
	Handle(ctx context.Context, req Request) ([]Action, error)
}

// Env is what an agent may use when it is provisioned.
type Env struct {
	Bot     Bot
	HTTP    *http.Client // for outbound calls (see NewHTTPClient); nil: NewHTTPClient's defaults
	Secrets Secrets      // resolves secret references in the agent config; may be nil
	Logger  zerolog.Logger
}

// httpClient is the client for outbound calls (NewHTTPClient's defaults if
// none was given), always with the same-host redirect policy.
func (e Env) httpClient() *http.Client {
	return withRedirectPolicy(e.HTTP)
}

// Secrets resolves a secret reference from an agent's config (an API key, an
// HMAC secret) for the given bot. The worker backs it with the keyring or Vault.
type Secrets interface {
	Secret(ctx context.Context, botID, ref string) (string, error)
}

// Provisioner is implemented by agents that set themselves up (resolve secrets,
// build clients) before their first Handle.
type Provisioner interface {
	Provision(ctx context.Context, env Env) error
}

// Validator is implemented by agents that check their config. Validate looks
// at the config alone — never at what Provision resolved — so it also runs
// where the config is written (Registry.Check: `bots add`, `bots set-agent`),
// where secrets cannot be opened. Its errors name the field.
type Validator interface {
	Validate() error
}

// Cleaner is implemented by agents holding resources to free when the agent
// is replaced (config change) or the worker stops.
type Cleaner interface {
	Cleanup() error
}

// Factory builds an unprovisioned agent from its JSON config (may be empty).
type Factory func(config json.RawMessage) (Agent, error)

// Registry maps bots.agent kinds to factories.
type Registry map[string]Factory

// Builtin returns a registry with the built-in kinds: echo, http, openai.
func Builtin() Registry {
	return Registry{
		"echo":   NewEcho,
		"http":   NewHTTP,
		"openai": NewOpenAI,
	}
}

// Kinds lists the registered kinds, sorted.
func (r Registry) Kinds() []string {
	out := make([]string, 0, len(r))
	for k := range r {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Check decodes and validates a config of the given kind without
// provisioning it (no secret is resolved, no connection made): what `bots add`
// and `bots set-agent` run before they write a config. Unknown fields, values
// of the wrong type and invalid settings are errors naming the field.
func (r Registry) Check(kind string, config json.RawMessage) error {
	a, err := r.decode(kind, config)
	if err != nil {
		return err
	}
	if c, ok := a.(Cleaner); ok {
		_ = c.Cleanup()
	}
	return nil
}

// decode builds the unprovisioned agent and validates its config.
func (r Registry) decode(kind string, config json.RawMessage) (Agent, error) {
	f, ok := r[kind]
	if !ok {
		return nil, permanent.Mark(fmt.Errorf("agents: unknown agent kind %q (have %s)", kind, strings.Join(r.Kinds(), ", ")))
	}
	a, err := f(config)
	if err != nil {
		return nil, permanent.Mark(fmt.Errorf("agents: %s config: %w", kind, err))
	}
	if v, ok := a.(Validator); ok {
		if err := v.Validate(); err != nil {
			if c, ok := a.(Cleaner); ok {
				_ = c.Cleanup()
			}
			return nil, permanent.Mark(fmt.Errorf("agents: %s config: %w", kind, err))
		}
	}
	return a, nil
}

// Build creates, validates and provisions the agent of the given kind, in
// that order: a config that fails Validate resolves no secret. Errors of
// decoding and validation are permanent (permanent.Mark); Provision decides for its own.
func (r Registry) Build(ctx context.Context, kind string, config json.RawMessage, env Env) (Agent, error) {
	a, err := r.decode(kind, config)
	if err != nil {
		return nil, err
	}
	if p, ok := a.(Provisioner); ok {
		if err := p.Provision(ctx, env); err != nil {
			if c, ok := a.(Cleaner); ok {
				_ = c.Cleanup()
			}
			return nil, fmt.Errorf("agents: provision %s: %w", kind, err)
		}
	}
	return a, nil
}

// ValidateActions checks a reply against the protocol: known types, the
// fields each type needs, Buko's limits. The error names the action index and
// the problem, never the text.
func ValidateActions(actions []Action) error {
	if len(actions) > MaxActions {
		return fmt.Errorf("reply has %d actions, at most %d allowed", len(actions), MaxActions)
	}
	total := 0
	for i, a := range actions {
		total += len(a.Text) + len(a.Caption) + len(a.Data) + len(a.FileName)
		if err := validateAction(a); err != nil {
			return fmt.Errorf("action %d (%q): %w", i, truncate(a.Type, 20), err)
		}
	}
	if total > MaxReplyBytes {
		return fmt.Errorf("reply carries %d bytes, at most %d allowed", total, MaxReplyBytes)
	}
	return nil
}

func validateAction(a Action) error {
	switch a.Type {
	case ActionSend:
		return checkText("text", a.Text, true)
	case ActionEdit:
		if a.MessageID == "" {
			return errors.New("message_id is required")
		}
		return checkText("text", a.Text, true)
	case ActionDelete:
		if a.MessageID == "" {
			return errors.New("message_id is required")
		}
		return nil
	case ActionTyping:
		if a.ChatAction != "" && !buko.ValidChatAction(a.ChatAction) {
			return fmt.Errorf("action %q is not a documented chat action", truncate(a.ChatAction, 30))
		}
		return nil
	case ActionPhoto, ActionDocument:
		if len(a.Data) == 0 {
			return errors.New("data is required (bytes, base64 in JSON)")
		}
		if len(a.FileName) > MaxFileNameLen {
			return fmt.Errorf("file_name longer than %d bytes", MaxFileNameLen)
		}
		if a.Type == ActionPhoto && a.MimeType != "" && !strings.HasPrefix(a.MimeType, "image/") {
			return errors.New("mime_type of a photo must be image/*")
		}
		return checkText("caption", a.Caption, false)
	case "":
		return errors.New("type is required")
	}
	return errors.New("unknown action type")
}

func checkText(field, s string, required bool) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", field)
	}
	n := utf8.RuneCountInString(s)
	if required && strings.TrimSpace(s) == "" {
		return fmt.Errorf("%s is required", field)
	}
	if n > buko.MaxTextLen {
		return fmt.Errorf("%s has %d characters, at most %d allowed", field, n, buko.MaxTextLen)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// SplitText cuts s into pieces of at most max characters, preferring to cut
// after a newline, then after a space; pieces are never empty.
func SplitText(s string, max int) []string {
	if max <= 0 {
		max = buko.MaxTextLen
	}
	var out []string
	for strings.TrimSpace(s) != "" {
		if utf8.RuneCountInString(s) <= max {
			out = append(out, s)
			break
		}
		// byte offset of the max-th rune
		cut, n := 0, 0
		for i := range s {
			if n == max {
				cut = i
				break
			}
			n++
		}
		piece := s[:cut]
		if i := strings.LastIndex(piece, "\n"); i > len(piece)/2 {
			cut = i + 1
		} else if i := strings.LastIndex(piece, " "); i > len(piece)/2 {
			cut = i + 1
		}
		if strings.TrimSpace(s[:cut]) != "" {
			out = append(out, s[:cut])
		}
		s = s[cut:]
	}
	return out
}

// MessageText returns the text of an update's new message, or "" (edits,
// membership changes and media without a caption have none).
func MessageText(u buko.Update) string {
	if u.Message == nil {
		return ""
	}
	if u.Message.Text != "" {
		return u.Message.Text
	}
	return u.Message.Caption
}
