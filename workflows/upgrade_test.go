package workflows

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/workflow"

	"buko.app/agentrunner/internal/testsupport"
)

// oldChatWorkflow is ChatWorkflow as the release before lean-turns issues
// its commands (no lean-turns marker).
func oldChatWorkflow(ctx workflow.Context, in ChatInput) (ChatResult, error) {
	return chatWorkflow(ctx, in, false)
}

// A chat workflow started by the release before lean-turns finishes on this
// one: a worker of the old code answers the first updates; it stops and a
// worker of the new code takes the running workflow over (replaying its
// history: the old commands, no marker), answers the next update the old
// way, continues-as-new, and answers the rest the new way (the marker, a
// local Respond). Every message is answered once, in order.
func TestIntegrationStartedOnOldCodeFinishesOnNew(t *testing.T) {
	e := newEnv(t)
	s := fastSettings()
	s.MaxUpdatesPerRun = 4
	e.handoff = NewHandoff(e.c, e.queue).WithSettings(s)
	o := WorkerOptions{TaskQueue: e.queue, Bots: e.bots, Tokens: e.tokens, API: e.api, Marks: e.marks, Logger: zerolog.Nop()}
	old, err := newWorker(e.c, o, oldChatWorkflow)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	bot := e.newBot("upgrade_bot", "echo", nil)
	user := e.newUser("Una")
	chat := e.startChat(user, bot.ID)
	texts := []string{"u1", "u2", "u3", "u4", "u5"}
	for _, txt := range texts {
		e.say(chat, user, txt)
	}
	ups := e.updates(bot, 2+len(texts)) // the bot joining, /start, the texts
	for _, u := range ups[:3] {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "the old worker's replies", waitLimit, func() (bool, string) {
		r := e.botReplies(chat)
		return len(r) == 2, fmt.Sprint(replyTexts(r))
	})
	old.Stop()
	e.startWorker(WorkerOptions{})
	for _, u := range ups[3:] {
		e.hand(bot.ID, u)
	}
	id := WorkflowID(bot.ID, chat)
	testsupport.Until(t, "every reply, in order", waitLimit, func() (bool, string) {
		r := replyTexts(e.botReplies(chat))
		return len(r) == 6 && fmt.Sprint(r[1:]) == fmt.Sprint(texts), fmt.Sprint(r)
	})
	runs := e.chainRuns(t, id)
	if len(runs) < 2 {
		t.Fatalf("want a continue-as-new chain, got %d runs", len(runs))
	}
	first := e.history(t, id, runs[0].runID)
	if hasMarker(first, versionLeanTurns) || !hasActivity(first, ActivityAgent) || hasActivity(first, ActivityRespond) {
		t.Error("the run started on the old code did not keep the old commands to its end")
	}
	// Its successor answered the last updates the new way (its replies are
	// out before its workflow task completes: wait for the task).
	testsupport.Until(t, "the successor's lean commands", waitLimit, func() (bool, string) {
		second := e.history(t, id, runs[1].runID)
		return hasMarker(second, versionLeanTurns) && !hasActivity(second, ActivityAgent) && hasLocalMarker(second), fmt.Sprintf("%d events", len(second))
	})
	if got := replyTexts(e.botReplies(chat)); len(got) != 6 {
		t.Errorf("replies %v", got)
	}
}

func (e *env) history(t *testing.T, id, runID string) []*historypb.HistoryEvent {
	t.Helper()
	it := e.c.GetWorkflowHistory(context.Background(), id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var out []*historypb.HistoryEvent
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// hasMarker reports whether a run recorded the version marker changeID, by
// the TemporalChangeVersion search attribute the SDK upserts with it (the
// marker's own details are sealed by the codec; search attributes are not).
func hasMarker(evs []*historypb.HistoryEvent, changeID string) bool {
	for _, ev := range evs {
		f := ev.GetUpsertWorkflowSearchAttributesEventAttributes().GetSearchAttributes().GetIndexedFields()["TemporalChangeVersion"]
		if f != nil && strings.Contains(string(f.GetData()), changeID+"-") {
			return true
		}
	}
	return false
}

func hasLocalMarker(evs []*historypb.HistoryEvent) bool {
	for _, ev := range evs {
		if ev.GetMarkerRecordedEventAttributes().GetMarkerName() == "LocalActivity" {
			return true
		}
	}
	return false
}

func hasActivity(evs []*historypb.HistoryEvent, name string) bool {
	for _, ev := range evs {
		if ev.GetActivityTaskScheduledEventAttributes().GetActivityType().GetName() == name {
			return true
		}
	}
	return false
}
