package agents

// A tiny agent service speaking the http agent protocol, shipped so dev mode
// (agentrunner dev) has an http bot to talk to and as a worked example of
// docs/agent-protocol.md: verify the signature over the raw body, decode the
// request, answer with actions.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"buko.app/agentrunner/buko"
)

// exampleMaxBody bounds a request the example service reads.
const exampleMaxBody = 1 << 20

// ExampleServiceSkew is how far a request's timestamp may be from the
// example service's clock.
const ExampleServiceSkew = 5 * time.Minute

// ExampleService is an http.Handler implementing an agent service: to a text
// message it answers "typing" and a reply that counts the words and the
// conversation's turns; other updates get no actions. Requests without a
// valid signature (keyed with Secret) get 401. Now is the clock (nil:
// time.Now).
type ExampleService struct {
	Secret []byte
	Now    func() time.Time
}

type exampleRequest struct {
	Version int         `json:"version"`
	ChatID  string      `json:"chat_id"`
	Update  buko.Update `json:"update"`
	Memory  []Turn      `json:"memory"`
}

func (s ExampleService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, exampleMaxBody))
	if err != nil {
		http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	if len(s.Secret) == 0 {
		http.Error(w, "the service has no secret", http.StatusInternalServerError)
		return
	}
	if err := Verify(s.Secret, r.Header.Get(HeaderTimestamp), r.Header.Get(HeaderSignature), body, now(), ExampleServiceSkew); err != nil {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var req exampleRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Version != ProtocolVersion {
		http.Error(w, "want a version 1 request", http.StatusBadRequest)
		return
	}
	actions := []Action{}
	if m := req.Update.Message; m != nil && strings.TrimSpace(m.Text) != "" {
		words := len(strings.Fields(m.Text))
		actions = append(actions,
			Action{Type: ActionTyping},
			Action{Type: ActionSend, ReplyToMessageID: m.MessageID,
				Text: fmt.Sprintf("The example agent got %d word(s): %q. (%d earlier turn(s) in this chat's memory.)", words, m.Text, len(req.Memory))})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"actions": actions})
}
