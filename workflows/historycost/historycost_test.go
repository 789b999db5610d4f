package historycost

import (
	"context"
	"os"
	"testing"
	"time"

	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
)

func TestMain(m *testing.M) { testsupport.Main(m) }

func loadHistory(t *testing.T, path string) []*historypb.HistoryEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var h historypb.History
	if err := (temporalproto.CustomJSONUnmarshalOptions{}).Unmarshal(b, &h); err != nil {
		t.Fatal(err)
	}
	return h.Events
}

// TestCountRecordedHistory counts a recorded history (testdata of package
// workflows) event by event: the rules of Count, on events whose kinds are
// known from the file.
func TestCountRecordedHistory(t *testing.T) {
	run1 := loadHistory(t, "../testdata/history-v2-run1.json")
	run2 := loadHistory(t, "../testdata/history-v2-run2.json")
	c1 := Count(run1)
	if c1.Events != 65 || c1.ByEvent["WorkflowExecutionSignaled"] != 6 || c1.ByEvent["ActivityTaskScheduled"] != 7 {
		t.Fatalf("run 1: %s", c1)
	}
	// signal-with-start (start + first signal) 1, five more signals, 7 activities,
	// one task with markers (Version + LoadChatMark), TemporalChangeVersion exempt.
	want1 := map[string]int{ActionStartWorkflow: 1, ActionSignal: 5, ActionScheduleAct: 7, ActionLocalMarkers: 1}
	for k, v := range want1 {
		if c1.ByKind[k] != v {
			t.Errorf("run 1 %s = %d, want %d (%v)", k, c1.ByKind[k], v, c1.ByKind)
		}
	}
	if c1.Actions != 14 {
		t.Errorf("run 1: %d actions, want 14 (%v)", c1.Actions, c1.ByKind)
	}
	// A continue-as-new run: its start counts, no signal; two tasks with a
	// Version marker, one with the SaveChatMark marker; one timer.
	c2 := Count(run2)
	want2 := map[string]int{ActionStartWorkflow: 1, ActionScheduleAct: 5, ActionLocalMarkers: 3, ActionTimer: 1}
	for k, v := range want2 {
		if c2.ByKind[k] != v {
			t.Errorf("run 2 %s = %d, want %d (%v)", k, c2.ByKind[k], v, c2.ByKind)
		}
	}
	if c2.ByKind[ActionSignal] != 0 || c2.Events != 45 {
		t.Errorf("run 2: %s", c2)
	}
	all := CountChain([][]*historypb.HistoryEvent{run1, run2})
	if all.Events != 110 || all.Runs != 2 || all.Actions != c1.Actions+c2.Actions {
		t.Errorf("chain: %s", all)
	}
}

// TestUpdateCostGoal runs the measurement against the Temporal dev server and
// holds the event budget of docs/workflows.md for echo. One message at a
// time (each answered before the next, so the count does not depend on
// timing): at most 6 events per update, the chain's start and end included,
// and at most 2 billable actions per update plus the chain's own (the
// watermark save at its end, and its quiet-time timer: one per IdleTimeout
// of activity, so one or two here). A burst's cost
// depends on how fast the Handoff signals compared with how fast the
// workflow takes them (docs/BENCHMARKS.md): the test holds that its
// updates were taken several to a workflow task (under 5 events per update;
// one task per update costs 5), and logs the figure.
func TestUpdateCostGoal(t *testing.T) {
	addr := testsupport.Getenv(t, "Temporal", "TEMPORAL_ADDRESS", testsupport.ServicesHint)
	ctx, cancel := context.WithTimeout(context.Background(), testsupport.Timeout(3*time.Minute))
	defer cancel()
	c, err := Dial(ctx, addr, "default", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := Run(ctx, Options{Client: c, Logger: zerolog.Nop(), Agents: []string{"echo", "http"}, IdleTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		t.Logf("%s %s: %d updates, %.2f events and %.2f actions per update (%s)", r.Agent, r.Pattern, r.Updates, r.EventsPerUpdate, r.ActionsPerUpdate, r.Cost)
		if r.Replies != r.Messages || r.Updates < r.Messages {
			t.Errorf("%s %s: %d replies to %d messages (%d updates)", r.Agent, r.Pattern, r.Replies, r.Messages, r.Updates)
		}
		if r.Agent != "echo" {
			continue
		}
		switch r.Pattern {
		case Quiet:
			// The quiet-time timer is armed once per IdleTimeout of activity
			// (a slow machine may need a second one): bounded apart.
			timers := r.Cost.ByKind[ActionTimer]
			if r.EventsPerUpdate > 6 || r.Cost.Actions-timers > 2*r.Updates+1 || timers > 3 {
				t.Errorf("echo, quiet: %.2f events per update (budget 6), %d actions and %d timers for %d updates (budget 2 each + 1, and 1–3 timers)", r.EventsPerUpdate, r.Cost.Actions-timers, timers, r.Updates)
			}
		case Burst:
			if r.EventsPerUpdate >= 5 {
				t.Errorf("echo, burst of 20: %.2f events per update: not taken together", r.EventsPerUpdate)
			}
		}
	}
}
