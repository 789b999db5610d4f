package historycost

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/agents"
)

// ---- the run's own services and stores ----

// benchSecretRef is the (sealed-shaped) secret reference of the run's agents;
// benchSecrets resolves it.
const benchSecretRef = "bench:v1:history-cost"

type benchSecrets struct{}

func (benchSecrets) Secret(_ context.Context, _, ref string) (string, error) {
	if ref != benchSecretRef {
		return "", fmt.Errorf("historycost: unknown secret reference")
	}
	return "history-cost-secret-0123456789", nil
}

// httpAgentService answers the http agent's call like echo: every text
// message gets "you said: …" as a reply to it.
func httpAgentService(w http.ResponseWriter, r *http.Request) {
	var req agents.HTTPRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	reply := agents.HTTPReply{Actions: []agents.Action{}}
	if m := req.Update.Message; m != nil && m.Text != "" {
		reply.Actions = append(reply.Actions, agents.Action{Type: agents.ActionSend, Text: "you said: " + m.Text, ReplyToMessageID: m.MessageID})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(reply)
}

// openAIService is an OpenAI-compatible chat-completions endpoint that
// answers with the number of messages it was given.
func openAIService(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if r.URL.Path != "/v1/chat/completions" || json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&req) != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"choices": []any{map[string]any{"message": map[string]string{"role": "assistant", "content": fmt.Sprintf("answer to %d messages", len(req.Messages))}}},
	})
}

type tokens struct {
	mu sync.Mutex
	m  map[string]vault.Token
}

func (t *tokens) set(botID string, tok vault.Token) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.m[botID] = tok
}

func (t *tokens) Token(_ context.Context, botID string) (buko.Credential, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	tok, ok := t.m[botID]
	if !ok {
		return nil, fmt.Errorf("token of %s: %w", botID, workflows.ErrBotNotFound)
	}
	return tok, nil
}

func (t *tokens) Invalidate(string) {}

type directory struct {
	mu sync.Mutex
	m  map[string]workflows.BotSpec
}

func (d *directory) set(s workflows.BotSpec) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.m[s.ID] = s
}

func (d *directory) Bot(_ context.Context, botID string) (workflows.BotSpec, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.m[botID]
	if !ok {
		return workflows.BotSpec{}, workflows.ErrBotNotFound
	}
	return s, nil
}
