package workflows

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/workflows/agents"
	"buko.app/agentrunner/workflows/codec"
)

// Recorded histories live in testdata/history-*.json; their payloads are
// sealed with the test-only key in testdata/replay-keys.json. Every history
// recorded by an earlier version of ChatWorkflow must keep replaying: that is
// what makes a deploy safe for running workflows (docs/workflows.md).

func replayKeys(t testing.TB) *codec.Keyring {
	t.Helper()
	k, err := codec.LoadKeyFile(context.Background(), "testdata/replay-keys.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestReplayRecordedHistories(t *testing.T) {
	files, err := filepath.Glob("testdata/history-*.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no recorded histories in testdata")
	}
	dc := codec.DataConverter(replayKeys(t))
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r, err := worker.NewWorkflowReplayerWithOptions(worker.WorkflowReplayerOptions{
				DataConverter:    dc,
				FailureConverter: codec.FailureConverter(dc),
			})
			if err != nil {
				t.Fatal(err)
			}
			r.RegisterWorkflowWithOptions(ChatWorkflow, workflow.RegisterOptions{Name: ChatWorkflowName})
			fh, err := os.Open(f)
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			hist, err := client.HistoryFromJSON(fh, client.HistoryJSONOptions{})
			if err != nil {
				t.Fatal(err)
			}
			// Payloads sealed since codec format 2 are bound to their
			// workflow id, which the run's input names in the clear.
			exec := workflow.Execution{ID: "ReplayId"}
			for _, p := range hist.GetEvents()[0].GetWorkflowExecutionStartedEventAttributes().GetInput().GetPayloads() {
				if id := p.GetMetadata()[codec.MetadataWorkflowID]; len(id) > 0 {
					exec.ID = string(id)
				}
			}
			if err := r.ReplayWorkflowHistoryWithOptions(NewLogger(zerolog.Nop()), hist, worker.ReplayWorkflowHistoryOptions{OriginalExecution: exec}); err != nil {
				t.Fatalf("history %s no longer replays: %v", f, err)
			}
		})
	}
}

// TestRecordHistory records new histories from the dev server into testdata.
// Run it by hand when ChatWorkflow changes (never in CI):
//
//	AGENTRUNNER_RECORD_HISTORY=v2 go test ./workflows -run TestRecordHistory
func TestRecordHistory(t *testing.T) {
	label := os.Getenv("AGENTRUNNER_RECORD_HISTORY")
	if label == "" {
		t.Skip("set AGENTRUNNER_RECORD_HISTORY=<label> to record histories into testdata")
	}
	e := newEnv(t)
	// Re-dial with the committed replay keys so the histories replay in CI.
	opts, err := ClientOptions(DialOptions{Address: temporalAddress(t), Namespace: e.ns, Keys: replayKeys(t), Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e.c = c
	s := fastSettings()
	s.MaxUpdatesPerRun = 4
	s.IdleTimeout = 3 * time.Second
	e.handoff = NewHandoff(c, e.queue).WithSettings(s)

	// An agent service that answers like echo, but breaks on "break".
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req agents.HTTPRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		text := agents.MessageText(req.Update)
		switch {
		case text == "":
			_, _ = io.WriteString(w, `{"actions":[]}`)
		case strings.Contains(text, "break"):
			_, _ = io.WriteString(w, `{"actions":[{"type":"nonsense"}]}`)
		default:
			_ = json.NewEncoder(w).Encode(agents.HTTPReply{Actions: []agents.Action{
				{Type: agents.ActionTyping},
				{Type: agents.ActionSend, Text: "you said: " + text, ReplyToMessageID: req.Update.Message.MessageID},
			}})
		}
	}))
	defer srv.Close()
	t.Setenv("AGENTRUNNER_AGENT_SECRET_WF_RECORD_HMAC", "record-secret-0123456789")
	e.startWorker(WorkerOptions{})
	bot := e.newBot("record_bot", "http", json.RawMessage(fmt.Sprintf(`{"url":%q,"secret":"env:AGENTRUNNER_AGENT_SECRET_WF_RECORD_HMAC"}`, srv.URL)))
	recordChain(t, e, c, bot, label)
	// The echo agent runs as a local activity since lean-turns: its own chain.
	recordChain(t, e, c, e.newBot("record_echo_bot", "echo", nil), label+"-echo")
}

// recordChain plays one chat (three texts, one of them "break", and a
// duplicate) with bot and writes every run of its chain as
// testdata/history-<label>-run<N>.json.
func recordChain(t *testing.T, e *env, c client.Client, bot BotSpec, label string) {
	t.Helper()
	user := e.newUser("Rec")
	chat := e.startChat(user, bot.ID)
	for _, txt := range []string{"one", "break", "two"} {
		e.say(chat, user, txt)
	}
	ups := e.updates(bot, 5)
	for i, u := range ups {
		e.hand(bot.ID, u)
		if i == 2 {
			e.hand(bot.ID, u) // a duplicate
		}
	}
	id := WorkflowID(bot.ID, chat)
	testsupport.Until(t, "the workflow chain to end idle", waitLimit, func() (bool, string) {
		d, err := c.DescribeWorkflow(context.Background(), id, "")
		if err != nil {
			return false, err.Error()
		}
		return d.RawResponse.WorkflowExecutionInfo.Status.String() == "Completed", d.RawResponse.WorkflowExecutionInfo.Status.String()
	})
	// Every run of the chain, oldest first.
	resp, err := c.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{
		Namespace: e.ns, Query: fmt.Sprintf("WorkflowId = %q", id),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Executions) < 2 {
		t.Fatalf("want a continue-as-new chain, got %d runs", len(resp.Executions))
	}
	for i, ex := range resp.Executions {
		hist := &historypb.History{}
		it := c.GetWorkflowHistory(context.Background(), id, ex.Execution.RunId, false, 0)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				t.Fatal(err)
			}
			hist.Events = append(hist.Events, ev)
		}
		data, err := temporalproto.CustomJSONMarshalOptions{Indent: "  "}.Marshal(hist)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("testdata/history-%s-run%d.json", label, len(resp.Executions)-i)
		if err := os.WriteFile(name, append(data, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d events)", name, len(hist.Events))
	}
}
