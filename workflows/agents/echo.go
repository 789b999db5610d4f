package agents

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
)

// Echo greets /start with the bot's name and answers every other text message
// with the same text, as a reply to it. Edits, membership changes and messages
// without text are ignored. It takes no config.
type Echo struct {
	bot Bot
}

// NewEcho is the echo factory; the config must be empty or {}.
func NewEcho(config json.RawMessage) (Agent, error) {
	if err := decodeStrict(config, &struct{}{}); err != nil {
		return nil, err
	}
	return &Echo{}, nil
}

// Validate has nothing to check: the config is empty (NewEcho refused any field).
func (e *Echo) Validate() error { return nil }

// Provision records which bot the agent speaks for.
func (e *Echo) Provision(_ context.Context, env Env) error {
	e.bot = env.Bot
	return nil
}

// Handle answers one update.
func (e *Echo) Handle(_ context.Context, req Request) ([]Action, error) {
	m := req.Update.Message
	if m == nil || m.Text == "" {
		return nil, nil
	}
	if isCommand(m.Text, "start", e.bot.Handle) {
		name := e.bot.DisplayName
		if name == "" {
			name = req.Bot.DisplayName
		}
		if name == "" {
			name = "@" + e.bot.Handle
		}
		greeting := fmt.Sprintf("Hello! I'm %s. Send me a message and I'll echo it back.", name)
		return []Action{{Type: ActionSend, Text: greeting}}, nil
	}
	return []Action{{Type: ActionSend, Text: m.Text, ReplyToMessageID: m.MessageID}}, nil
}

// isCommand reports whether text is /name, /name@handle, or either followed by arguments.
func isCommand(text, name, handle string) bool {
	word, _, _ := strings.Cut(text, " ")
	word, _, _ = strings.Cut(word, "\n")
	cmd, at, hasAt := strings.Cut(word, "@")
	if cmd != "/"+name {
		return false
	}
	return !hasAt || handle == "" || strings.EqualFold(at, handle)
}

// decodeStrict decodes an optional JSON object into v, rejecting unknown fields.
func decodeStrict(config json.RawMessage, v any) error {
	s := strings.TrimSpace(string(config))
	if s == "" || s == "null" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode config: %s", describeJSONError(err))
	}
	if dec.More() {
		return fmt.Errorf("decode config: trailing data")
	}
	return nil
}
