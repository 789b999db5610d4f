package agents

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/permanent"
)

// OpenAI defaults.
const (
	DefaultOpenAIBaseURL  = "https://api.openai.com/v1"
	DefaultOpenAITimeout  = 60 * time.Second
	DefaultTypingInterval = 4 * time.Second
	maxCompletionBody     = 4 << 20
)

// OpenAIConfig is the config of the openai agent kind.
type OpenAIConfig struct {
	BaseURL        string   `json:"base_url,omitempty"` // default https://api.openai.com/v1
	Model          string   `json:"model"`
	SystemPrompt   string   `json:"system_prompt,omitempty"`
	APIKey         string   `json:"api_key"`              // secret reference: "env:AGENTRUNNER_AGENT_SECRET_…" or a sealed value (CheckSecretRef)
	Timeout        string   `json:"timeout,omitempty"`    // Go duration, default 60s
	MaxTokens      int      `json:"max_tokens,omitempty"` // 0: the endpoint's default
	Temperature    *float64 `json:"temperature,omitempty"`
	TypingInterval string   `json:"typing_interval,omitempty"` // default 4s
}

// OpenAIAgent answers text messages through an OpenAI-compatible
// chat-completions endpoint, with the chat's memory as the conversation.
type OpenAIAgent struct {
	cfg     OpenAIConfig
	timeout time.Duration
	typing  time.Duration
	key     string
	hc      *http.Client
	bot     Bot
}

// NewOpenAI is the openai factory.
func NewOpenAI(config json.RawMessage) (Agent, error) {
	a := &OpenAIAgent{timeout: DefaultOpenAITimeout, typing: DefaultTypingInterval}
	if err := decodeStrict(config, &a.cfg); err != nil {
		return nil, err
	}
	if a.cfg.BaseURL == "" {
		a.cfg.BaseURL = DefaultOpenAIBaseURL
	}
	for _, d := range []struct {
		name string
		s    string
		out  *time.Duration
	}{{"timeout", a.cfg.Timeout, &a.timeout}, {"typing_interval", a.cfg.TypingInterval, &a.typing}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%s %q: want a positive Go duration", d.name, truncate(d.s, 40))
		}
		*d.out = v
	}
	return a, nil
}

// Provision resolves the API key.
func (a *OpenAIAgent) Provision(ctx context.Context, env Env) error {
	a.bot, a.hc = env.Bot, env.httpClient()
	k, err := requiredSecret(ctx, env, "api_key", a.cfg.APIKey)
	if err != nil {
		return err
	}
	a.key = k
	return nil
}

// Validate checks the config: endpoint, model, API key reference's form,
// durations and limits.
func (a *OpenAIAgent) Validate() error {
	u, err := url.Parse(a.cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("base_url must be an absolute http(s) URL")
	}
	if u.User != nil {
		return errors.New("base_url must not carry credentials (user:password@); use api_key")
	}
	if err := CheckSecretRef("api_key", a.cfg.APIKey); err != nil {
		return err
	}
	if a.timeout > MaxCallTimeout {
		return fmt.Errorf("timeout %s: at most %s", a.timeout, MaxCallTimeout)
	}
	if a.cfg.Temperature != nil && (*a.cfg.Temperature < 0 || *a.cfg.Temperature > 2) {
		return errors.New("temperature must be within 0..2")
	}
	if strings.TrimSpace(a.cfg.Model) == "" {
		return errors.New("model is required")
	}
	if a.cfg.MaxTokens < 0 {
		return errors.New("max_tokens must not be negative")
	}
	return nil
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatRequest struct {
	Model       string        `json:"model"`
	Messages    []chatMessage `json:"messages"`
	MaxTokens   int           `json:"max_tokens,omitempty"`
	Temperature *float64      `json:"temperature,omitempty"`
}

type chatResponse struct {
	Choices []struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
}

// Handle sends the conversation to the endpoint, shows "typing" while it
// waits, and splits the answer at Buko's 5000-character limit.
func (a *OpenAIAgent) Handle(ctx context.Context, req Request) ([]Action, error) {
	text := MessageText(req.Update)
	if text == "" {
		return nil, nil
	}
	msgs := make([]chatMessage, 0, len(req.Memory)+2)
	if a.cfg.SystemPrompt != "" {
		msgs = append(msgs, chatMessage{Role: "system", Content: a.cfg.SystemPrompt})
	}
	for _, t := range req.Memory {
		role := "user"
		if t.Role == RoleAssistant {
			role = "assistant"
		}
		msgs = append(msgs, chatMessage{Role: role, Content: t.Text})
	}
	msgs = append(msgs, chatMessage{Role: "user", Content: text})
	body, err := json.Marshal(chatRequest{Model: a.cfg.Model, Messages: msgs, MaxTokens: a.cfg.MaxTokens, Temperature: a.cfg.Temperature})
	if err != nil {
		return nil, permanent.Mark(fmt.Errorf("openai agent: encode request: %w", err))
	}

	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	stopTyping := a.keepTyping(ctx, req.Typing)
	answer, err := a.complete(ctx, body)
	stopTyping()
	if err != nil {
		return nil, err
	}
	parts := SplitText(answer, buko.MaxTextLen)
	actions := make([]Action, 0, len(parts))
	for i, p := range parts {
		act := Action{Type: ActionSend, Text: p}
		if i == 0 && req.Update.Message != nil {
			act.ReplyToMessageID = req.Update.Message.MessageID
		}
		actions = append(actions, act)
	}
	return actions, nil
}

// keepTyping sends a typing action now and every interval until stopped.
func (a *OpenAIAgent) keepTyping(ctx context.Context, typing func(context.Context) error) (stop func()) {
	if typing == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(a.typing)
		defer t.Stop()
		for {
			_ = typing(ctx) // best effort: a lost indicator is harmless
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

func (a *OpenAIAgent) complete(ctx context.Context, body []byte) (string, error) {
	endpoint := strings.TrimRight(a.cfg.BaseURL, "/") + "/chat/completions"
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return "", permanent.Mark(fmt.Errorf("openai agent: build request: %w", err))
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Authorization", "Bearer "+a.key)
	resp, err := a.hc.Do(hr)
	if err != nil {
		return "", callError("openai agent: POST chat/completions", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxCompletionBody+1))
	if err != nil {
		return "", fmt.Errorf("openai agent: read answer: %w", redactURL(err))
	}
	if err := statusError("openai agent", resp.StatusCode); err != nil {
		return "", err
	}
	if len(data) > maxCompletionBody {
		return "", permanent.Mark(errors.New("openai agent: answer too large"))
	}
	var cr chatResponse
	if err := json.Unmarshal(data, &cr); err != nil {
		return "", permanent.Mark(fmt.Errorf("openai agent: malformed answer: %s", describeJSONError(err)))
	}
	if len(cr.Choices) == 0 || strings.TrimSpace(cr.Choices[0].Message.Content) == "" {
		return "", permanent.Mark(errors.New("openai agent: answer has no choices or empty content"))
	}
	return cr.Choices[0].Message.Content, nil
}
