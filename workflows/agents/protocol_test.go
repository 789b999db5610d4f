package agents

import (
	"encoding/json"
	"os"
	"sort"
	"strings"
	"testing"
)

// TestSchemaMatchesCode keeps docs/agent-protocol.schema.json in step with
// the action vocabulary and limits of this package.
func TestSchemaMatchesCode(t *testing.T) {
	data, err := os.ReadFile("../../docs/agent-protocol.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Defs struct {
			Reply struct {
				Properties struct {
					Actions struct {
						MaxItems int `json:"maxItems"`
					} `json:"actions"`
				} `json:"properties"`
			} `json:"reply"`
			Text struct {
				MaxLength int `json:"maxLength"`
			} `json:"text"`
			Action struct {
				Properties struct {
					Type struct {
						Enum []string `json:"enum"`
					} `json:"type"`
				} `json:"properties"`
			} `json:"action"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("schema is not valid JSON: %v", err)
	}
	got := append([]string(nil), s.Defs.Action.Properties.Type.Enum...)
	sort.Strings(got)
	want := []string{ActionDelete, ActionDocument, ActionEdit, ActionPhoto, ActionSend, ActionTyping}
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("schema action types %v, code %v", got, want)
	}
	if s.Defs.Reply.Properties.Actions.MaxItems != MaxActions || s.Defs.Text.MaxLength != 5000 {
		t.Errorf("schema limits differ from the code")
	}
}

// FuzzReply: any bytes from an agent service give actions that validate, or
// an error; never a panic.
func FuzzReply(f *testing.F) {
	f.Add([]byte(`{"actions":[{"type":"send","text":"hi"}]}`))
	f.Add([]byte(`{"actions":[{"type":"photo","data":"aGk="}]}`))
	f.Add([]byte(`{"actions":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var rep HTTPReply
		if err := json.Unmarshal(body, &rep); err != nil {
			_ = describeJSONError(err)
			return
		}
		_ = ValidateActions(rep.Actions)
	})
}
