package buko_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"buko.app/agentrunner/buko"
)

func TestFrameBuilders(t *testing.T) {
	for _, tc := range []struct {
		got  []byte
		want string
	}{
		{buko.AckFrame("10001"), `{"type":"ack","update_id":"10001"}`},
		{buko.PingFrame(), `{"type":"ping"}`},
		{buko.PongFrame(), `{"type":"pong"}`},
	} {
		if string(tc.got) != tc.want {
			t.Errorf("got %s, want %s", tc.got, tc.want)
		}
		if _, err := buko.DecodeFrame(tc.got); err != nil {
			t.Errorf("%s does not decode: %v", tc.got, err)
		}
	}
}

func TestDecodeFrame(t *testing.T) {
	good := []struct {
		in   string
		want buko.Frame
	}{
		{`{"type":"update","update":{"update_id":"10001","message":{"message_id":"42","chat":{"id":"spc_abc123","type":"private"},"text":"hello"}}}`,
			buko.Frame{Type: "update", Update: &buko.Update{UpdateID: "10001", Message: &buko.Message{MessageID: "42", Chat: buko.Chat{ID: "spc_abc123", Type: "private"}, Text: "hello"}}}},
		{`{"type":"ack","update_id":"10001"}`, buko.Frame{Type: "ack", UpdateID: "10001"}},
		{`{"type":"ack","update_id":10001}`, buko.Frame{Type: "ack", UpdateID: "10001"}},
		{` {"type":"ping"} `, buko.Frame{Type: "ping"}},
		{`{"type":"pong","extra":[1,{"a":null}]}`, buko.Frame{Type: "pong"}},
		{`{"type":"hello","session":"x","update_id":"junk","update":7}`, buko.Frame{Type: "hello"}},
		// fields a type does not define are dropped
		{`{"type":"ping","update_id":"5"}`, buko.Frame{Type: "ping"}},
		{`{"type":"update","update_id":"9","update":{"update_id":"8"}}`, buko.Frame{Type: "update", Update: &buko.Update{UpdateID: "8"}}},
		// an update of an unknown kind is kept, with no payload
		{`{"type":"update","update":{"update_id":"3","reaction":{"x":1}}}`, buko.Frame{Type: "update", Update: &buko.Update{UpdateID: "3"}}},
		// empty arrays normalize to nil
		{`{"type":"update","update":{"update_id":"4","message":{"message_id":"1","chat":{"id":"c","type":"group"},"entities":[],"photo":[],"reply_to_message":{"message_id":"0","chat":{"id":"c"},"entities":[]}}}}`,
			buko.Frame{Type: "update", Update: &buko.Update{UpdateID: "4", Message: &buko.Message{MessageID: "1", Chat: buko.Chat{ID: "c", Type: "group"},
				ReplyToMessage: &buko.Message{MessageID: "0", Chat: buko.Chat{ID: "c"}}}}}},
	}
	for _, tc := range good {
		f, err := buko.DecodeFrame([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(f, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.in, f, tc.want)
		}
	}

	bad := []string{
		``, `   `, `null`, `[]`, `"update"`, `42`, `{`, `{"type":"ping"`, `{"type":"ping"}{"type":"pong"}`, `{"type":"ping"} x`,
		`{}`, `{"type":""}`, `{"type":null}`, `{"type":7}`, `{"type":["update"]}`,
		`{"type":"update"}`, `{"type":"update","update":null}`, `{"type":"update","update":"x"}`, `{"type":"update","update":{}}`,
		`{"type":"update","update":{"update_id":"007"}}`, `{"type":"update","update":{"update_id":"-1"}}`, `{"type":"update","update":{"update_id":1.5}}`,
		`{"type":"update","update":{"update_id":"1","message":"hi"}}`, `{"type":"update","update":{"update_id":"1","message":{"date":"yesterday"}}}`,
		`{"type":"ack"}`, `{"type":"ack","update_id":null}`, `{"type":"ack","update_id":""}`, `{"type":"ack","update_id":"1e3"}`,
		`{"type":"ack","update_id":{"id":"1"}}`, `{"type":"ack","update_id":" 12"}`,
		"\xff\xfe{}",
		`{"type":"ping","x":` + strings.Repeat("1", buko.MaxFrameBytes) + `}`,
	}
	for _, in := range bad {
		f, err := buko.DecodeFrame([]byte(in))
		if err == nil {
			t.Errorf("%.60q accepted as %+v", in, f)
			continue
		}
		if !errors.Is(err, buko.ErrBadFrame) {
			t.Errorf("%.60q: error %v does not match ErrBadFrame", in, err)
		}
	}
}

func TestDecodeUpdate(t *testing.T) {
	u, err := buko.DecodeUpdate([]byte(`{"update_id":"10001","message":{"message_id":"42","date":1783000000,"chat":{"id":"spc_abc123","type":"private"},
		"from":{"id":"bot_scoped_user_abc","is_bot":false,"display_name":"Alice","handle":"alice"},"text":"/start",
		"entities":[{"type":"bot_command","offset":0,"length":6}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if u.Kind() != buko.KindMessage || u.ChatID() != "spc_abc123" || u.Message.From.Handle != "alice" || u.Message.Entities[0].Type != buko.EntityCommand {
		t.Fatalf("%+v", u)
	}
	u, err = buko.DecodeUpdate([]byte(`{"update_id":"2","my_chat_member":{"chat":{"id":"g","type":"group","title":"T"},"from":{"id":"u"},"date":3,
		"old_chat_member":{"status":"left"},"new_chat_member":{"status":"member"}}}`))
	if err != nil || u.Kind() != buko.KindMyChatMember || u.ChatID() != "g" || u.MyChatMember.NewChatMember.Status != buko.MemberMember {
		t.Fatalf("%+v %v", u, err)
	}
	for _, in := range []string{`{}`, `{"update_id":null}`, `[]`, `{"update_id":"1"`, `{"update_id":"1","edited_message":[]}`} {
		if _, err := buko.DecodeUpdate([]byte(in)); !errors.Is(err, buko.ErrBadFrame) {
			t.Errorf("%s: err = %v", in, err)
		}
	}
}

func TestDecodeEnvelope(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want buko.Envelope
	}{
		{`{"ok":true,"result": { "a" : [1, 2] }}`, buko.Envelope{OK: true, Result: json.RawMessage(`{"a":[1,2]}`)}},
		{`{"ok":true,"result":null}`, buko.Envelope{OK: true}},
		{`{"ok":true,"result":true}`, buko.Envelope{OK: true, Result: json.RawMessage(`true`)}},
		{`{"ok":false,"error_code":403,"code":"CHAT_FORBIDDEN","description":"User has not started this bot."}`,
			buko.Envelope{ErrorCode: 403, Code: "CHAT_FORBIDDEN", Description: "User has not started this bot."}},
		{`{"ok":false,"error_code":"429","code":"RATE_LIMITED","retry_after":2.1}`, buko.Envelope{ErrorCode: 429, Code: "RATE_LIMITED", RetryAfter: 3}},
		{`{"ok":false,"code":42,"description":{"x":1},"retry_after":"x","error_code":-1}`, buko.Envelope{}},
		{`{"ok":false,"retry_after":1e400}`, buko.Envelope{RetryAfter: 86400}},
		{`{"OK":false,"Code":"X"}`, buko.Envelope{Code: "X"}}, // encoding/json matches keys case-insensitively
	} {
		env, err := buko.DecodeEnvelope([]byte(tc.in))
		if err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(env, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.in, env, tc.want)
		}
	}
	for _, in := range []string{``, `null`, `[]`, `<html>`, `{}`, `{"ok":null}`, `{"ok":1}`, `{"ok":"true"}`, `{"ok":true,"result":}`, `{"ok":true} {}`} {
		if env, err := buko.DecodeEnvelope([]byte(in)); err == nil {
			t.Errorf("%q accepted as %+v", in, env)
		}
	}
}
