package workflows

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"buko.app/agentrunner/buko"
)

func (f *fakeActs) respondCalls() (local, regular int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, in := range f.responds {
		if in.Local {
			local++
		} else {
			regular++
		}
	}
	return local, regular
}

// Pending updates are answered by one local Respond, in order, memory grown
// between them as the workflow grows it.
func TestChatWorkflowAnswersPendingInOneLocalRespond(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	in := testInput()
	for i := 1; i <= 5; i++ {
		in.State.Pending = append(in.State.Pending, UpdateSignal{Update: textUpdate(fmt.Sprint(i), "c1", fmt.Sprint("b", i))})
	}
	in.State.Pending = append(in.State.Pending, UpdateSignal{Update: textUpdate("3", "c1", "dup")})
	env.ExecuteWorkflow(ChatWorkflowName, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:b1,re:b2,re:b3,re:b4,re:b5" {
		t.Errorf("sent %q", got)
	}
	local, regular := f.respondCalls()
	if local != 1 || regular != 0 || len(f.responds[0].Updates) != 5 {
		t.Errorf("%d local and %d regular Responds (first with %d updates), want one local with 5", local, regular, len(f.responds[0].Updates))
	}
	if m := f.memories[4]; len(m) != 8 || m[7].Text != "re:b4" {
		t.Errorf("memory given for the 5th update: %+v", m)
	}
	var res ChatResult
	_ = env.GetWorkflowResult(&res)
	if res.Processed != 5 || res.Duplicates != 1 || res.LastUpdateID != "5" {
		t.Errorf("result %+v", res)
	}
}

// An agent that does not run locally is learnt once: the first local
// Respond comes back Remote, every update then goes to the regular one.
func TestChatWorkflowRemoteAgentGoesStraightToTheRegularRespond(t *testing.T) {
	f := &fakeActs{remote: true}
	env := newTestEnv(t, f)
	for i := 1; i <= 3; i++ {
		signalAt(env, time.Duration(i)*time.Second, textUpdate(fmt.Sprint(i), "c1", fmt.Sprint("r", i)))
	}
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:r1,re:r2,re:r3" {
		t.Errorf("sent %q", got)
	}
	if local, regular := f.respondCalls(); local != 1 || regular != 3 {
		t.Errorf("%d local and %d regular Responds, want 1 and 3", local, regular)
	}
}

// A local Respond that fails falls back to the regular activity, which
// Temporal retries durably; every update is answered once, in order.
func TestChatWorkflowLocalFailureFallsBackToTheRegularRespond(t *testing.T) {
	f := &fakeActs{failLocal: true}
	env := newTestEnv(t, f)
	for i := 1; i <= 3; i++ {
		signalAt(env, time.Duration(i)*time.Second, textUpdate(fmt.Sprint(i), "c1", fmt.Sprint("l", i)))
	}
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:l1,re:l2,re:l3" {
		t.Errorf("sent %q", got)
	}
	if local, regular := f.respondCalls(); local != 3 || regular != 3 {
		t.Errorf("%d local and %d regular Responds, want 3 and 3", local, regular)
	}
}

// A send the local Respond could not do at once (a retryable failure) is
// sent by the regular send activity, with Temporal's retries, before the
// next update's reply.
func TestChatWorkflowSendNotDoneLocallyIsRetriedDurably(t *testing.T) {
	f := &fakeActs{}
	calls := 0
	f.sendHook = func(ctx context.Context, in ActionInput) (ActionResult, error) {
		calls++
		if calls == 1 {
			return ActionResult{}, temporal.NewApplicationError("buko: 502", "HTTP_502")
		}
		return f.send(ctx, in)
	}
	env := newTestEnv(t, f)
	in := testInput()
	in.State.Pending = []UpdateSignal{{Update: textUpdate("1", "c1", "s1")}, {Update: textUpdate("2", "c1", "s2")}}
	env.ExecuteWorkflow(ChatWorkflowName, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:s1,re:s2" {
		t.Errorf("sent %q", got)
	}
	var res ChatResult
	_ = env.GetWorkflowResult(&res)
	if res.Failures != 0 || res.Processed != 2 || calls != 2 {
		t.Errorf("result %+v", res)
	}
}

// The quiet-time timer is armed once per quiet time, not once per update:
// five updates a second apart, then quiet, cost two timers (the first, and
// one for the rest of the quiet time after it fired), where the release
// before lean-turns armed six.
func TestChatWorkflowQuietTimerNotArmedPerUpdate(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	var timers []time.Duration
	env.SetOnTimerScheduledListener(func(_ string, d time.Duration) { timers = append(timers, d) })
	for i := 1; i <= 5; i++ {
		signalAt(env, time.Duration(i)*time.Second, textUpdate(fmt.Sprint(i), "c1", fmt.Sprint("q", i)))
	}
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(f.sent) != 5 {
		t.Fatalf("sent %v", f.sent)
	}
	if len(timers) != 2 || timers[0] != time.Minute || timers[1] >= time.Minute {
		t.Errorf("timers %v, want a minute, then the rest of the quiet time", timers)
	}
	if !env.IsWorkflowCompleted() {
		t.Error("workflow did not end after its quiet time")
	}
}

// A permanent send failure in a local Respond skips that reply's other
// actions and is recorded; the next update is answered.
func TestChatWorkflowLocalSendRejectedRecorded(t *testing.T) {
	f := &fakeActs{failSend: map[string]error{
		"re:z1": temporal.NewNonRetryableApplicationError("buko: 403", buko.CodeBotBlocked, nil),
	}}
	env := newTestEnv(t, f)
	in := testInput()
	in.State.Pending = []UpdateSignal{{Update: textUpdate("1", "c1", "z1")}, {Update: textUpdate("2", "c1", "z2")}}
	env.ExecuteWorkflow(ChatWorkflowName, in)
	var res ChatResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:z2" || res.Failures != 1 || res.Processed != 2 {
		t.Errorf("sent %q, result %+v", got, res)
	}
}
