package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"buko.app/agentrunner/buko/sim"
)

func TestSummarizeNearestRank(t *testing.T) {
	if got := Summarize(nil); got != (LatencySummary{}) {
		t.Fatalf("empty: %+v", got)
	}
	var lat []time.Duration
	for i := 100; i >= 1; i-- { // out of order on purpose
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	got := Summarize(lat)
	want := LatencySummary{P50: 50, P90: 90, P99: 99, Max: 100, Mean: 50.5}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if lat[0] != 100*time.Millisecond {
		t.Fatal("Summarize sorted its argument")
	}
	one := Summarize([]time.Duration{1234567 * time.Nanosecond})
	if one.P50 != 1.23 || one.P99 != 1.23 || one.Max != 1.23 {
		t.Fatalf("one sample, 0.01 ms steps: %+v", one)
	}
}

func TestCountReplies(t *testing.T) {
	const bot = "bot_1"
	tr := []sim.TranscriptMessage{
		{MessageID: "1", FromKind: "user"},
		{MessageID: "2", FromKind: "bot", FromID: bot, ReplyToMessageID: "1"},
		{MessageID: "3", FromKind: "bot", FromID: bot, ReplyToMessageID: "1"},         // a duplicate
		{MessageID: "4", FromKind: "user"},                                            // lost, then late
		{MessageID: "5", FromKind: "bot", FromID: "bot_other", ReplyToMessageID: "4"}, // not our bot
		{MessageID: "6", FromKind: "user", ReplyToMessageID: "4"},                     // not a bot
		{MessageID: "7", FromKind: "bot", FromID: bot, ReplyToMessageID: "4"},
		{MessageID: "8", FromKind: "user"},                                    // lost for good
		{MessageID: "9", FromKind: "bot", FromID: bot, ReplyToMessageID: "x"}, // not one we sent
	}
	dups, late := countReplies(tr, bot, []string{"1", "4", "8"}, map[string]bool{"4": true, "8": true})
	if dups != 1 || late != 1 {
		t.Fatalf("duplicates %d (want 1), late %d (want 1)", dups, late)
	}
}

func TestEchoPlanDealsRoundRobin(t *testing.T) {
	s := Echo{Bot: "b", Messages: 5, Concurrency: 9, PollInterval: time.Millisecond}
	if s.Chats() != 5 {
		t.Fatalf("Chats() = %d: want the concurrency clamped to the messages", s.Chats())
	}
	s.Concurrency = 2
	chats := s.plan("run")
	if len(chats) != 2 || len(chats[0].texts) != 3 || len(chats[1].texts) != 2 {
		t.Fatalf("plan: %d chats", len(chats))
	}
	if chats[1].texts[0] != "bench run message 2 of 5" {
		t.Fatalf("text: %q", chats[1].texts[0])
	}
}

func TestWriteReports(t *testing.T) {
	r := &EchoResult{BotHandle: "echo_bot", BotID: "bot_1", SimURL: "http://sim", Sent: 4, Replied: 3, Lost: 1, Concurrency: 2,
		TimeoutSeconds: 2, LatencyMS: LatencySummary{P50: 1.5}, SimRateLimited: 2}
	var text, js bytes.Buffer
	if err := Write(&text, "text", r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"@echo_bot (bot_1) at http://sim", "4 messages over 2 chat(s)", "timeout 2s", "3 of 4 sent; lost 1", "p50 1.5 ms", "2 (a tier quota paced"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, text.String())
		}
	}
	if err := Write(&js, "json", r); err != nil {
		t.Fatal(err)
	}
	var back EchoResult
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Lost != 1 || back.LatencyMS.P50 != 1.5 {
		t.Fatalf("json: %v %+v\n%s", err, back, js.String())
	}
	if !strings.Contains(js.String(), `"latency_ms": {`) {
		t.Fatalf("json field names changed:\n%s", js.String())
	}
	text.Reset()
	if err := Write(&text, "text", &GatewayResult{Sockets: 3, Delivered: 10, DeliveredSeconds: 0.5, DeliveredPerSec: 20}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "3 opened in") || !strings.Contains(text.String(), "10 in 0.50 s: 20 updates/s") {
		t.Fatalf("gateway table:\n%s", text.String())
	}
}
