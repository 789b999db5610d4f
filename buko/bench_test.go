package buko_test

import (
	"context"
	"testing"

	"buko.app/agentrunner/buko"
)

var benchFrame = []byte(`{"type":"update","update":{"update_id":"10001","message":{"message_id":"42","date":1783000000,` +
	`"chat":{"id":"spc_abc123","type":"private"},"from":{"id":"bot_scoped_user_abc","is_bot":false,"display_name":"Alice",` +
	`"handle":"alice"},"text":"/start","entities":[{"type":"bot_command","offset":0,"length":6}]}}}`)

func BenchmarkDecodeFrame(b *testing.B) {
	b.SetBytes(int64(len(benchFrame)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := buko.DecodeFrame(benchFrame); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSendMessage is one sendMessage round trip over loopback HTTP/1.1.
func BenchmarkSendMessage(b *testing.B) {
	s := newAPIServer(b, ok(msgResult))
	c := s.client()
	p := buko.SendMessageParams{ChatID: "spc_abc123", Text: "Hello"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.SendMessage(context.Background(), cred(testToken), p); err != nil {
			b.Fatal(err)
		}
	}
}
