package workflows

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.temporal.io/api/workflowservice/v1"
	"google.golang.org/protobuf/proto"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/workflows/agents"
)

func replyTexts(ms []sim.TranscriptMessage) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Text
	}
	return out
}

func TestIntegrationEchoDuplicateProcessedOnce(t *testing.T) {
	e := newEnv(t)
	e.startWorker(WorkerOptions{})
	bot := e.newBot("echo_dup", "echo", nil)
	user := e.newUser("Alice")
	chat := e.startChat(user, bot.ID) // my_chat_member + /start
	msg := e.say(chat, user, "hello duplicate "+testsupport.RandHex(4))
	ups := e.updates(bot, 3)
	for _, u := range ups {
		e.hand(bot.ID, u)
		e.hand(bot.ID, u) // at-least-once delivery: the same update twice
	}
	testsupport.Until(t, "two bot replies", waitLimit, func() (bool, string) {
		r := e.botReplies(chat)
		return len(r) >= 2, fmt.Sprint(replyTexts(r))
	})
	// Redeliver once more after processing; then wait until the workflow has seen it.
	e.hand(bot.ID, ups[2])
	testsupport.Until(t, "four duplicates dropped", waitLimit, func() (bool, string) {
		st, err := e.state(bot.ID, chat)
		return err == nil && st.Duplicates == 4 && st.Pending == 0, fmt.Sprintf("%+v %v", st, err)
	})
	r := e.botReplies(chat)
	if len(r) != 2 {
		t.Fatalf("bot replies %q, want exactly 2", replyTexts(r))
	}
	if !strings.Contains(r[0].Text, "Bot echo_dup") {
		t.Errorf("greeting %q does not name the bot", r[0].Text)
	}
	if r[1].ReplyToMessageID != msg || !strings.HasPrefix(r[1].Text, "hello duplicate") {
		t.Errorf("echo %+v is not a reply to %s with the same text", r[1], msg)
	}
	if got := testutil.ToFloat64(e.metrics.workflowCounter[metricDuplicates]); got != 4 {
		t.Errorf("duplicate metric = %v, want 4", got)
	}
	// Two updates were answered: two reply latencies, measured from the handoff
	// (e.hand passes no receipt time). The SDK's own metrics are forwarded
	// (echo runs as a local activity: the activity metrics are checked with
	// the http agent, TestIntegrationMalformedAgentReplyRecorded).
	if n := testutil.CollectAndCount(e.metrics.replyLatency); n != 1 {
		t.Errorf("reply latency series: %d", n)
	}
	fams := gather(t, e.reg)
	if h := fams["agentrunner_workflows_reply_latency_seconds"]; h == nil || h.GetMetric()[0].GetHistogram().GetSampleCount() != 2 {
		t.Errorf("reply latency: %v", h)
	}
	for _, name := range []string{
		"agentrunner_temporal_workflow_task_schedule_to_start_latency_seconds",
	} {
		if f := fams[name]; f == nil || len(f.GetMetric()) == 0 {
			t.Errorf("%s not forwarded from the SDK", name)
		}
	}
}

func TestIntegrationOrderWithinChatUnderConcurrency(t *testing.T) {
	e := newEnv(t)
	e.startWorker(WorkerOptions{})
	const chats, perChat = 4, 6
	var bots []BotSpec
	for i := 0; i < 2; i++ {
		bots = append(bots, e.newBot(fmt.Sprintf("order_%d", i), "echo", nil))
	}
	type chatT struct {
		bot        BotSpec
		id, userID string
		texts      []string
	}
	var cs []*chatT
	for i := 0; i < chats; i++ {
		b := bots[i%len(bots)]
		u := e.newUser(fmt.Sprintf("User%d", i))
		cs = append(cs, &chatT{bot: b, id: e.startChat(u, b.ID), userID: u})
	}
	for n := 0; n < perChat; n++ {
		for _, c := range cs {
			txt := fmt.Sprintf("chat %s msg %d %s", c.id, n, testsupport.RandHex(2))
			c.texts = append(c.texts, txt)
			e.say(c.id, c.userID, txt)
		}
	}
	// Hand off like a session: one lane per chat, in order; chats in parallel.
	byChat := map[string][]buko.Update{}
	for _, b := range bots {
		for _, u := range e.updates(b, chats/len(bots)*(perChat+2)) {
			byChat[u.ChatID()] = append(byChat[u.ChatID()], u)
		}
	}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Add(1)
		go func(c *chatT) {
			defer wg.Done()
			for _, u := range byChat[c.id] {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := e.handoff.Handoff(ctx, c.bot.ID, u)
				cancel()
				if err != nil {
					t.Errorf("handoff: %v", err)
					return
				}
			}
		}(c)
	}
	wg.Wait()
	for _, c := range cs {
		testsupport.Until(t, "all replies in "+c.id, waitLimit, func() (bool, string) {
			r := e.botReplies(c.id)
			return len(r) >= perChat+1, fmt.Sprint(len(r))
		})
		got := replyTexts(e.botReplies(c.id))[1:]
		if strings.Join(got, "|") != strings.Join(c.texts, "|") {
			t.Errorf("chat %s replies out of order:\n got %q\nwant %q", c.id, got, c.texts)
		}
	}
}

func TestIntegrationChaosRetriedReplyOnce(t *testing.T) {
	e := newEnv(t)
	e.startWorker(WorkerOptions{})
	bot := e.newBot("chaos_bot", "echo", nil)
	user := e.newUser("Carol")
	chat := e.startChat(user, bot.ID)
	const n = 8
	var texts []string
	for i := 0; i < n; i++ {
		texts = append(texts, fmt.Sprintf("chaos %d %s", i, testsupport.RandHex(2)))
		e.say(chat, user, texts[i])
	}
	ups := e.updates(bot, n+2)
	_, err := e.control().SetChaos(context.Background(), sim.ChaosConfig{Seed: 7, Rest5xxRate: 0.3, Rest429Rate: 0.2})
	e.must(err)
	for _, u := range ups {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "all replies through chaos", waitLimit, func() (bool, string) {
		st, err := e.state(bot.ID, chat)
		return err == nil && st.Processed == n+2 && st.Pending == 0, fmt.Sprintf("%+v %v", st, err)
	})
	_, err = e.control().SetChaos(context.Background(), sim.ChaosConfig{})
	e.must(err)
	got := replyTexts(e.botReplies(chat))
	if len(got) != n+1 || strings.Join(got[1:], "|") != strings.Join(texts, "|") {
		t.Fatalf("replies %q, want greeting + %q each once", got, texts)
	}
	st := e.stats()
	if st.Chaos.Rest5xx == 0 || st.Chaos.Rest429 == 0 {
		t.Errorf("chaos injected no faults (%+v): the test proved nothing", st.Chaos)
	}
	if sv, _ := e.state(bot.ID, chat); sv.Failures != 0 {
		t.Errorf("failures recorded: %+v", sv)
	}
}

func TestIntegrationForbiddenNotRetried(t *testing.T) {
	e := newEnv(t)
	e.startWorker(WorkerOptions{})
	bot := e.newBot("blocked_bot", "echo", nil)
	user := e.newUser("Dave")
	chat := e.startChat(user, bot.ID)
	e.say(chat, user, "you will not answer this")
	ups := e.updates(bot, 3)
	e.must(e.control().Block(context.Background(), chat, user))
	before := e.stats().RestCalls["sendMessage"]
	for _, u := range ups {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "all updates processed", waitLimit, func() (bool, string) {
		st, err := e.state(bot.ID, chat)
		return err == nil && st.Processed == 3, fmt.Sprintf("%+v %v", st, err)
	})
	st, _ := e.state(bot.ID, chat)
	if st.Failures != 2 || !strings.Contains(st.LastError, "403") && !strings.Contains(st.LastError, buko.CodeBotBlocked) {
		t.Errorf("state %+v: want 2 failures naming the 403", st)
	}
	if calls := e.stats().RestCalls["sendMessage"] - before; calls != 2 {
		t.Errorf("sendMessage called %d times for 2 updates: a 403 was retried", calls)
	}
}

func TestIntegrationRedeliveryAfterContinueAsNewDropped(t *testing.T) {
	e := newEnv(t)
	s := fastSettings()
	s.MaxUpdatesPerRun = 2
	e.handoff.WithSettings(s)
	e.startWorker(WorkerOptions{})
	bot := e.newBot("can_bot", "echo", nil)
	user := e.newUser("Erin")
	chat := e.startChat(user, bot.ID)
	for i := 0; i < 4; i++ {
		e.say(chat, user, fmt.Sprintf("can %d %s", i, testsupport.RandHex(2)))
	}
	ups := e.updates(bot, 6)
	for _, u := range ups {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "six processed across runs", waitLimit, func() (bool, string) {
		st, err := e.state(bot.ID, chat)
		return err == nil && st.Processed == 6 && st.Runs >= 2, fmt.Sprintf("%+v %v", st, err)
	})
	for _, u := range []buko.Update{ups[0], ups[3], ups[5]} {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "redeliveries dropped", waitLimit, func() (bool, string) {
		st, err := e.state(bot.ID, chat)
		return err == nil && st.Duplicates == 3 && st.Pending == 0, fmt.Sprintf("%+v %v", st, err)
	})
	if r := e.botReplies(chat); len(r) != 5 {
		t.Fatalf("replies %q, want 5", replyTexts(r))
	}
}

// slowAgent is an agent service that holds every request until released. It
// counts requests and the most it ever held at once.
func slowAgent(t *testing.T) (url string, release func(), seen, maxHeld func() int) {
	var mu sync.Mutex
	n, held, most := 0, 0, 0
	gate := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		held++
		most = max(most, held)
		mu.Unlock()
		defer func() { mu.Lock(); held--; mu.Unlock() }()
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"actions":[{"type":"send","text":"done"}]}`)
	}))
	rel := func() { once.Do(func() { close(gate) }) }
	t.Cleanup(func() { rel(); srv.Close() })
	get := func(p *int) func() int { return func() int { mu.Lock(); defer mu.Unlock(); return *p } }
	return srv.URL, rel, get(&n), get(&most)
}

func TestIntegrationFairnessFloodingBotDoesNotStarveOthers(t *testing.T) {
	e := newEnv(t)
	url, release, seen, maxHeld := slowAgent(t)
	secret := "0123456789abcdef-test-secret"
	t.Setenv("AGENTRUNNER_AGENT_SECRET_WF_TEST_HMAC", secret)
	e.startWorker(WorkerOptions{MaxConcurrentActivities: 4, PerBotConcurrency: 2})
	flood := e.newBot("flood_bot", "http", json.RawMessage(fmt.Sprintf(`{"url":%q,"secret":"env:AGENTRUNNER_AGENT_SECRET_WF_TEST_HMAC","timeout":"2m"}`, url)))
	quiet := e.newBot("quiet_bot", "echo", nil)
	const floodChats = 6
	for i := 0; i < floodChats; i++ {
		u := e.newUser(fmt.Sprintf("Flood%d", i))
		e.startChat(u, flood.ID)
	}
	for _, u := range e.updates(flood, 2*floodChats) {
		e.hand(flood.ID, u)
	}
	testsupport.Until(t, "flood bot to hold its slots", waitLimit, func() (bool, string) { return seen() >= 2, fmt.Sprint(seen()) })
	qu := e.newUser("Quiet")
	qc := e.startChat(qu, quiet.ID)
	e.say(qc, qu, "am I starved?")
	for _, u := range e.updates(quiet, 3) {
		e.hand(quiet.ID, u)
	}
	testsupport.Until(t, "the quiet bot's replies while the flood is stuck", waitLimit, func() (bool, string) {
		r := e.botReplies(qc)
		return len(r) == 2, fmt.Sprint(replyTexts(r))
	})
	if m := maxHeld(); m > 2 {
		t.Errorf("flood bot ran %d agent calls at once, bound is 2", m)
	}
	release()
	testsupport.Until(t, "the flood to drain", waitLimit, func() (bool, string) { return seen() >= 2*floodChats, fmt.Sprint(seen()) })
}

func TestIntegrationMalformedAgentReplyRecorded(t *testing.T) {
	e := newEnv(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"actions":[{"type":"explode"}]}`)
	}))
	t.Cleanup(srv.Close)
	t.Setenv("AGENTRUNNER_AGENT_SECRET_WF_TEST_HMAC2", "another-secret-of-16+bytes")
	e.startWorker(WorkerOptions{})
	bot := e.newBot("bad_agent", "http", json.RawMessage(fmt.Sprintf(`{"url":%q,"secret":"env:AGENTRUNNER_AGENT_SECRET_WF_TEST_HMAC2"}`, srv.URL)))
	user := e.newUser("Frank")
	chat := e.startChat(user, bot.ID)
	for _, u := range e.updates(bot, 2) {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "failures recorded", waitLimit, func() (bool, string) {
		st, err := e.state(bot.ID, chat)
		return err == nil && st.Failures == 2 && st.Processed == 2, fmt.Sprintf("%+v %v", st, err)
	})
	st, _ := e.state(bot.ID, chat)
	if !strings.Contains(st.LastError, ErrTypeAgentReply) {
		t.Errorf("last error %q does not name %s", st.LastError, ErrTypeAgentReply)
	}
	testsupport.Until(t, "the failure notice", waitLimit, func() (bool, string) {
		r := e.botReplies(chat)
		return len(r) == 1 && r[0].Text == FailureNotice, fmt.Sprint(replyTexts(r))
	})
	// The http agent runs as a regular activity: the SDK's activity metrics are forwarded.
	if f := gather(t, e.reg)["agentrunner_temporal_activity_schedule_to_start_latency_seconds"]; f == nil || len(f.GetMetric()) == 0 {
		t.Error("agentrunner_temporal_activity_schedule_to_start_latency_seconds not forwarded from the SDK")
	}
}

// TestIntegrationZZHistoryScan runs last: it scans every workflow history of
// this run's namespace for any token or user text used by any test.
func TestIntegrationZZHistoryScan(t *testing.T) {
	e := newEnv(t)
	e.startWorker(WorkerOptions{})
	bot := e.newBot("scan_bot", "echo", nil)
	user := e.newUser("Grace")
	chat := e.startChat(user, bot.ID)
	e.say(chat, user, "my secret diary entry "+testsupport.RandHex(6))
	for _, u := range e.updates(bot, 3) {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "replies", waitLimit, func() (bool, string) { return len(e.botReplies(chat)) == 2, "" })

	testRun.mu.Lock()
	secrets := append([]string(nil), testRun.secrets...)
	testRun.mu.Unlock()
	ctx := context.Background()
	var token []byte
	scanned, events := 0, 0
	for {
		resp, err := e.c.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{Namespace: e.ns, PageSize: 100, NextPageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, ex := range resp.Executions {
			scanned++
			raw, _ := proto.Marshal(ex)
			checkNoSecrets(t, "visibility of "+ex.Execution.WorkflowId, raw, secrets)
			it := e.c.GetWorkflowHistory(ctx, ex.Execution.WorkflowId, ex.Execution.RunId, false, 0)
			for it.HasNext() {
				ev, err := it.Next()
				if err != nil {
					t.Fatal(err)
				}
				events++
				raw, _ := proto.Marshal(ev)
				checkNoSecrets(t, fmt.Sprintf("%s event %d (%s)", ex.Execution.WorkflowId, ev.EventId, ev.EventType), raw, secrets)
			}
		}
		token = resp.NextPageToken
		if len(token) == 0 {
			break
		}
	}
	if scanned < 2 || events < 10 || len(secrets) < 3 {
		t.Fatalf("scanned %d executions, %d events, for %d secrets: too little to mean anything", scanned, events, len(secrets))
	}
	t.Logf("scanned %d executions, %d events in namespace %s for %d tokens/texts: none found", scanned, events, e.ns, len(secrets))
}

func checkNoSecrets(t *testing.T, where string, raw []byte, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("%s holds a token or user text in the clear (%d bytes secret)", where, len(s))
		}
		if len(s) > 12 {
			// A shorter, distinctive tail catches partial or re-encoded copies.
			if bytes.Contains(raw, []byte(s[len(s)-12:])) {
				t.Errorf("%s holds the tail of a token or user text", where)
			}
		}
	}
}

var _ = agents.ActionSend
