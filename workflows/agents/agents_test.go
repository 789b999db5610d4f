package agents

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/permanent"
)

type mapSecrets map[string]string

func (m mapSecrets) Secret(_ context.Context, botID, ref string) (string, error) {
	v, ok := m[botID+"/"+ref]
	if !ok {
		return "", fmt.Errorf("no secret %q", ref)
	}
	return v, nil
}

func msgUpdate(id, text string) buko.Update {
	return buko.Update{UpdateID: buko.UpdateID(id), Message: &buko.Message{
		MessageID: "m" + id, Chat: buko.Chat{ID: "c1", Type: buko.ChatPrivate}, Text: text,
		From: &buko.User{ID: "u1", DisplayName: "Ann"},
	}}
}

func build(t *testing.T, kind, cfg string, env Env) Agent {
	t.Helper()
	a, err := Builtin().Build(context.Background(), kind, json.RawMessage(cfg), env)
	if err != nil {
		t.Fatalf("build %s: %v", kind, err)
	}
	return a
}

func TestEcho(t *testing.T) {
	a := build(t, "echo", "", Env{Bot: Bot{ID: "b1", Handle: "echo_bot", DisplayName: "Echo Bot"}})
	ctx := context.Background()
	for _, start := range []string{"/start", "/start@echo_bot", "/start payload"} {
		acts, err := a.Handle(ctx, Request{Update: msgUpdate("1", start)})
		if err != nil || len(acts) != 1 || !strings.Contains(acts[0].Text, "Echo Bot") || acts[0].ReplyToMessageID != "" {
			t.Errorf("%q: %+v %v", start, acts, err)
		}
	}
	acts, _ := a.Handle(ctx, Request{Update: msgUpdate("2", "/start@other_bot")})
	if len(acts) != 1 || acts[0].Text != "/start@other_bot" {
		t.Errorf("a command for another bot is echoed as text: %+v", acts)
	}
	acts, _ = a.Handle(ctx, Request{Update: msgUpdate("3", "hi ✓")})
	if len(acts) != 1 || acts[0].Text != "hi ✓" || acts[0].ReplyToMessageID != "m3" || acts[0].Type != ActionSend {
		t.Errorf("echo: %+v", acts)
	}
	edit := buko.Update{UpdateID: "4", EditedMessage: &buko.Message{MessageID: "m3", Text: "edited"}}
	member := buko.Update{UpdateID: "5", MyChatMember: &buko.ChatMemberUpdated{NewChatMember: buko.MemberStatus{Status: "member"}}}
	for _, u := range []buko.Update{edit, member, {UpdateID: "6"}} {
		if acts, err := a.Handle(ctx, Request{Update: u}); err != nil || len(acts) != 0 {
			t.Errorf("update %s: want nothing, got %+v %v", u.UpdateID, acts, err)
		}
	}
	if _, err := Builtin().Build(ctx, "echo", json.RawMessage(`{"x":1}`), Env{}); !permanent.Is(err) {
		t.Errorf("echo with config: %v", err)
	}
}

func TestRegistryErrorsArePermanent(t *testing.T) {
	ctx := context.Background()
	for name, tc := range map[string]struct{ kind, cfg string }{
		"unknown kind":    {"nope", ""},
		"bad json":        {"http", `{`},
		"unknown field":   {"http", `{"url":"http://x","secret":"local:v1:s","bogus":1}`},
		"bad timeout":     {"http", `{"url":"http://x","secret":"local:v1:s","timeout":"soon"}`},
		"bad url":         {"http", `{"url":"ftp://x","secret":"local:v1:k"}`},
		"short secret":    {"http", `{"url":"http://x","secret":"local:v1:k"}`},
		"missing secret":  {"http", `{"url":"http://x"}`},
		"no model":        {"openai", `{"api_key":"local:v1:k"}`},
		"bad base url":    {"openai", `{"model":"m","api_key":"local:v1:k","base_url":"nope"}`},
		"missing api key": {"openai", `{"model":"m"}`},
	} {
		_, err := Builtin().Build(ctx, tc.kind, json.RawMessage(tc.cfg), Env{Bot: Bot{ID: "b"}, Secrets: mapSecrets{"b/local:v1:s": "s", "b/local:v1:k": "k"}})
		if err == nil || !permanent.Is(err) {
			t.Errorf("%s: want a permanent error, got %v", name, err)
		}
	}
}

func httpAgent(t *testing.T, h http.HandlerFunc, extra string) Agent {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	cfg := fmt.Sprintf(`{"url":%q,"secret":"local:v1:hmac"%s}`, srv.URL, extra)
	return build(t, "http", cfg, Env{Bot: Bot{ID: "b1"}, Secrets: mapSecrets{"b1/local:v1:hmac": "0123456789abcdef0123"}})
}

func TestHTTPAgentSignsAndParses(t *testing.T) {
	var got HTTPRequest
	a := httpAgent(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := Verify([]byte("0123456789abcdef0123"), r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature), body, time.Now(), time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if err := Verify([]byte("wrong-secret-wrong"), r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature), body, time.Now(), time.Minute); err == nil {
			t.Error("signature verified with the wrong secret")
		}
		_ = json.Unmarshal(body, &got)
		_, _ = io.WriteString(w, `{"actions":[{"type":"typing"},{"type":"send","text":"ok","reply_to_message_id":"m1"},`+
			`{"type":"photo","data":"aGVsbG8=","mime_type":"image/png","caption":"c"},{"type":"edit","message_id":"9","text":"e"},{"type":"delete","message_id":"9"}]}`)
	}, `,"memory_turns":1`)
	acts, err := a.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, ChatID: "c1", Update: msgUpdate("1", "hello"),
		Memory: []Turn{{RoleUser, "old"}, {RoleAssistant, "older"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(acts) != 5 || string(acts[2].Data) != "hello" || acts[1].Text != "ok" {
		t.Fatalf("actions %+v", acts)
	}
	if got.Version != ProtocolVersion || got.ChatID != "c1" || got.Update.Message.Text != "hello" || len(got.Memory) != 1 || got.Memory[0].Text != "older" {
		t.Fatalf("request %+v", got)
	}
}

func TestHTTPAgentMalformedRepliesArePermanent(t *testing.T) {
	long := strings.Repeat("x", buko.MaxTextLen+1)
	for name, body := range map[string]string{
		"not json":        `<html>`,
		"no actions":      `{}`,
		"unknown field":   `{"actions":[],"extra":true}`,
		"unknown type":    `{"actions":[{"type":"explode"}]}`,
		"empty text":      `{"actions":[{"type":"send","text":"  "}]}`,
		"text too long":   `{"actions":[{"type":"send","text":"` + long + `"}]}`,
		"edit without id": `{"actions":[{"type":"edit","text":"x"}]}`,
		"bad chat action": `{"actions":[{"type":"typing","action":"dancing"}]}`,
		"photo no data":   `{"actions":[{"type":"photo"}]}`,
		"photo not image": `{"actions":[{"type":"photo","data":"aGk=","mime_type":"text/plain"}]}`,
		"wrong type":      `{"actions":"send"}`,
		"trailing":        `{"actions":[]} {}`,
		"too many":        `{"actions":[` + strings.Repeat(`{"type":"typing"},`, MaxActions) + `{"type":"typing"}]}`,
	} {
		a := httpAgent(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, body) }, "")
		_, err := a.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")})
		if !permanent.Is(err) || !strings.Contains(err.Error(), "malformed reply") {
			t.Errorf("%s: want a permanent malformed-reply error, got %v", name, err)
		}
		if err != nil && strings.Contains(err.Error(), "xxxxxxxxxx") {
			t.Errorf("%s: error echoes the reply's content", name)
		}
	}
}

func TestHTTPAgentStatusClassification(t *testing.T) {
	for status, want := range map[int]bool{500: false, 503: false, 429: false, 408: false, 400: true, 401: true, 404: true} {
		a := httpAgent(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status) }, "")
		_, err := a.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")})
		if err == nil || permanent.Is(err) != want {
			t.Errorf("HTTP %d: permanent=%v, err %v", status, permanent.Is(err), err)
		}
	}
	// Timeout: retryable.
	block := make(chan struct{})
	defer close(block)
	a := httpAgent(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}, `,"timeout":"50ms"`)
	_, err := a.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")})
	if err == nil || permanent.Is(err) {
		t.Errorf("timeout: %v", err)
	}
}

func TestOpenAIAgent(t *testing.T) {
	var got chatRequest
	var auth string
	var typed atomic.Int32
	answer := strings.Repeat("word ", 2200) // 11000 chars → 3 messages
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" {
			http.NotFound(w, r)
			return
		}
		auth = r.Header.Get("Authorization")
		_ = json.NewDecoder(r.Body).Decode(&got)
		// Answer only once the agent has shown typing while it waits.
		for deadline := time.Now().Add(30 * time.Second); typed.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond) // in the server's handler goroutine (no t.Fatal there): bounded poll
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{"message": map[string]any{"role": "assistant", "content": answer}}}})
	}))
	defer srv.Close()
	cfg := fmt.Sprintf(`{"base_url":%q,"model":"tiny","system_prompt":"be brief","api_key":"local:v1:key","typing_interval":"10ms"}`, srv.URL+"/v1")
	a := build(t, "openai", cfg, Env{Bot: Bot{ID: "b1"}, Secrets: mapSecrets{"b1/local:v1:key": "sk-test"}})
	acts, err := a.Handle(context.Background(), Request{
		Update: msgUpdate("7", "question"),
		Memory: []Turn{{RoleUser, "q0"}, {RoleAssistant, "a0"}},
		Typing: func(context.Context) error { typed.Add(1); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if auth != "Bearer sk-test" || got.Model != "tiny" {
		t.Errorf("auth %q model %q", auth, got.Model)
	}
	roles := []string{}
	for _, m := range got.Messages {
		roles = append(roles, m.Role+":"+m.Content)
	}
	if strings.Join(roles, "|") != "system:be brief|user:q0|assistant:a0|user:question" {
		t.Errorf("messages %q", roles)
	}
	if typed.Load() < 1 {
		t.Error("no typing indicator while waiting")
	}
	if len(acts) != 3 || acts[0].ReplyToMessageID != "m7" || acts[1].ReplyToMessageID != "" {
		t.Fatalf("%d actions", len(acts))
	}
	var joined strings.Builder
	for _, act := range acts {
		if n := utf8.RuneCountInString(act.Text); n > buko.MaxTextLen || n == 0 {
			t.Errorf("piece of %d chars", n)
		}
		joined.WriteString(act.Text)
	}
	if joined.String() != answer {
		t.Error("split pieces do not join back to the answer")
	}
	if err := ValidateActions(acts); err != nil {
		t.Error(err)
	}
	// Non-text updates are ignored without a call.
	if acts, err := a.Handle(context.Background(), Request{Update: buko.Update{UpdateID: "8"}}); err != nil || acts != nil {
		t.Errorf("non-text: %v %v", acts, err)
	}
}

func TestOpenAIAgentErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		status    int
		body      string
		permanent bool
	}{
		"rate limited":  {429, `{}`, false},
		"server error":  {502, ``, false},
		"bad key":       {401, `{"error":{}}`, true},
		"no choices":    {200, `{"choices":[]}`, true},
		"empty content": {200, `{"choices":[{"message":{"content":"  "}}]}`, true},
		"garbage":       {200, `nope`, true},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, tc.body)
		}))
		cfg := fmt.Sprintf(`{"base_url":%q,"model":"m","api_key":"env:AGENTRUNNER_AGENT_SECRET_AGENTS_TEST_KEY"}`, srv.URL)
		t.Setenv("AGENTRUNNER_AGENT_SECRET_AGENTS_TEST_KEY", "sk-env")
		a := build(t, "openai", cfg, Env{Bot: Bot{ID: "b1"}})
		_, err := a.Handle(context.Background(), Request{Update: msgUpdate("1", "hi")})
		if err == nil || permanent.Is(err) != tc.permanent {
			t.Errorf("%s: permanent=%v err=%v", name, permanent.Is(err), err)
		}
		srv.Close()
	}
}

func TestSplitText(t *testing.T) {
	for _, s := range []string{"short", strings.Repeat("é", 12001), strings.Repeat("line\n", 3000), strings.Repeat("a", 5000)} {
		parts := SplitText(s, buko.MaxTextLen)
		if strings.Join(parts, "") != s {
			t.Errorf("pieces of a %d-char text do not rejoin", len(s))
		}
		for _, p := range parts {
			if n := utf8.RuneCountInString(p); n == 0 || n > buko.MaxTextLen {
				t.Errorf("piece of %d chars", n)
			}
		}
	}
	if p := SplitText("   ", 10); len(p) != 0 {
		t.Errorf("blank text gave %q", p)
	}
}
