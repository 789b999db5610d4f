package buko_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"buko.app/agentrunner/buko"
)

// Ids sent as JSON integers decode, normalised to decimal strings; what is
// not a non-negative integer is refused with the field named.
func TestLenientIDs(t *testing.T) {
	u, err := buko.DecodeUpdate([]byte(`{"update_id":10001,"message":{"message_id":42,"chat":{"id":123,"type":"private"},
		"from":{"id":7,"is_bot":false},"text":"hi","reply_to_message":{"message_id":41,"chat":{"id":123}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	m := u.Message
	if u.UpdateID != "10001" || m.MessageID != "42" || m.Chat.ID != "123" || m.From.ID != "7" ||
		m.ReplyToMessage.MessageID != "41" || m.ReplyToMessage.Chat.ID != "123" || m.Text != "hi" || m.Chat.Type != "private" {
		t.Fatalf("decoded %+v / %+v", u, m)
	}
	u, err = buko.DecodeUpdate([]byte(`{"update_id":"5","my_chat_member":{"chat":{"id":9,"type":"group"},"from":{"id":"u"},"old_chat_member":{"status":"left"},"new_chat_member":{"status":"member"}}}`))
	if err != nil || u.ChatID() != "9" || u.MyChatMember.From.ID != "u" {
		t.Fatalf("my_chat_member: %+v, %v", u, err)
	}
	// Opaque string ids stay as they are, leading zeros included.
	u, err = buko.DecodeUpdate([]byte(`{"update_id":"6","message":{"message_id":"007","chat":{"id":"spc_x"}}}`))
	if err != nil || u.Message.MessageID != "007" || u.ChatID() != "spc_x" {
		t.Fatalf("string ids: %+v, %v", u, err)
	}
	for _, bad := range []string{
		`{"update_id":"1","message":{"message_id":-1,"chat":{"id":"c"}}}`,
		`{"update_id":"1","message":{"message_id":1.5,"chat":{"id":"c"}}}`,
		`{"update_id":"1","message":{"message_id":1e3,"chat":{"id":"c"}}}`,
		`{"update_id":"1","message":{"message_id":"1","chat":{"id":true}}}`,
		`{"update_id":"1","message":{"message_id":"1","chat":{"id":"c"},"from":{"id":{}}}}`,
		`{"update_id":-3}`,
		`{"update_id":2.0}`,
	} {
		_, err := buko.DecodeUpdate([]byte(bad))
		if !errors.Is(err, buko.ErrBadFrame) {
			t.Errorf("%s: accepted (%v)", bad, err)
			continue
		}
		if !strings.Contains(err.Error(), "id") {
			t.Errorf("%s: error does not name an id: %v", bad, err)
		}
	}
}

// One item of a getUpdates batch whose ids are numbers decodes; one truly
// broken item does not fail the batch: the rest decode, the broken one comes
// back with its raw bytes and its update_id.
func TestPollUpdatesPerItem(t *testing.T) {
	s := newAPIServer(t, ok(`[{"update_id":"10001","message":{"message_id":"1","chat":{"id":"c"},"text":"a"}},
		{"update_id":10002,"message":{"message_id":2,"chat":{"id":"c"},"from":{"id":3},"text":"b"}},
		{"update_id":"10003","message":{"message_id":"3","chat":{"id":"c"},"text":{"not":"a string"}}},
		{"update_id":"10004","message":"garbage"},
		{"message":{"message_id":"5","chat":{"id":"c"}}},
		{"update_id":"10006","message":{"message_id":"6","chat":{"id":"c"},"text":"f"}}]`))
	b, err := s.client().PollUpdates(context.Background(), cred(testToken), buko.GetUpdatesParams{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, u := range b.Updates {
		ids = append(ids, string(u.UpdateID))
	}
	if strings.Join(ids, ",") != "10001,10002,10006" {
		t.Fatalf("decoded %v", ids)
	}
	if len(b.Undecodable) != 3 {
		t.Fatalf("undecodable %d: %v", len(b.Undecodable), b.Undecodable)
	}
	want := []struct{ id, chat string }{{"10003", "c"}, {"10004", ""}, {"", "c"}}
	for i, w := range want {
		u := b.Undecodable[i]
		if string(u.UpdateID) != w.id || u.ChatID != w.chat || len(u.Raw) == 0 || !errors.Is(u, buko.ErrBadFrame) {
			t.Errorf("undecodable %d: id %q chat %q raw %d bytes: %v", i, u.UpdateID, u.ChatID, len(u.Raw), u)
		}
		if strings.Contains(u.Error(), "not a string") || strings.Contains(u.Error(), "garbage") {
			t.Errorf("error quotes the payload: %v", u)
		}
	}
	// GetUpdates stays strict for tools.
	if _, err := s.client().GetUpdates(context.Background(), cred(testToken), buko.GetUpdatesParams{}); err == nil {
		t.Fatal("GetUpdates accepted a broken batch")
	}
}

// An update frame that cannot be read is an *Undecodable with its update_id,
// found even when the JSON is cut short; a frame with no readable id keeps
// its bytes; a frame of another type is a plain error.
func TestDecodeFrameUndecodable(t *testing.T) {
	for _, tc := range []struct {
		in, id string
		whole  bool
	}{
		{`{"type":"update","update":{"update_id":"77","message":{"message_id":"1","chat":{"id":"c"},"text":5}}}`, "77", false},
		{`{"type":"update","update":{"update_id":78,"message":{"chat":{"id":"c"},"text":"cut`, "78", true},
		{`{"type":"update","update":{"message":{"text":"x"},"update_id":"79"},"x":`, "79", true},
		{`{"type":"update","update":{"update_id":"x1"}}`, "", false},
		{`{"type":"update"}`, "", true},
		{`not json at all`, "", true},
	} {
		_, err := buko.DecodeFrame([]byte(tc.in))
		u, ok := buko.AsUndecodable(err)
		if !ok {
			t.Errorf("%s: %v is not undecodable", tc.in, err)
			continue
		}
		if string(u.UpdateID) != tc.id || (tc.whole && string(u.Raw) != tc.in) || !errors.Is(err, buko.ErrBadFrame) {
			t.Errorf("%s: id %q raw %q", tc.in, u.UpdateID, u.Raw)
		}
	}
	for _, in := range []string{`{"type":"ack","update_id":"x"}`, `{"type":"ping","x":`} {
		_, err := buko.DecodeFrame([]byte(in))
		if _, ok := buko.AsUndecodable(err); ok || !errors.Is(err, buko.ErrBadFrame) {
			t.Errorf("%s: %v", in, err)
		}
	}
}
