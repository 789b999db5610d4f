package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows/agents"
)

// fakeActs records what the workflow asked for; the workflow's logic is under
// test here, the real activities are tested against the simulator.
type fakeActs struct {
	mu        sync.Mutex
	agentIDs  []buko.UpdateID
	memories  [][]agents.Turn
	sent      []string
	failAgent map[buko.UpdateID]error
	failSend  map[string]error
	mark      buko.UpdateID // the chat's durable watermark (one chat)
	// agentHook and sendHook, when set, replace agent and send inside the fake Respond.
	agentHook func(context.Context, AgentInput) (AgentOutput, error)
	sendHook  func(context.Context, ActionInput) (ActionResult, error)
	remote    bool // the fake Respond answers a local call with Remote (a non-local agent)
	failLocal bool // the fake Respond fails every local call
	responds  []RespondInput
	saved     []buko.UpdateID // every SaveChatMark
	loads     int
}

func (f *fakeActs) loadMark(_ context.Context, in ChatMarkInput) (buko.UpdateID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads++
	return f.mark, nil
}

func (f *fakeActs) saveMark(_ context.Context, in ChatMarkInput) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saved = append(f.saved, in.ID)
	if f.mark == "" || in.ID.Compare(f.mark) > 0 {
		f.mark = in.ID
	}
	return nil
}

func (f *fakeActs) agent(_ context.Context, in AgentInput) (AgentOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.agentIDs = append(f.agentIDs, in.Update.UpdateID)
	f.memories = append(f.memories, in.Memory)
	if err := f.failAgent[in.Update.UpdateID]; err != nil {
		return AgentOutput{}, err
	}
	return AgentOutput{Actions: []agents.Action{{Type: agents.ActionSend, Text: "re:" + agents.MessageText(in.Update)}}}, nil
}

func (f *fakeActs) send(_ context.Context, in ActionInput) (ActionResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failSend[in.Action.Text]; err != nil {
		return ActionResult{}, err
	}
	f.sent = append(f.sent, in.Action.Text)
	return ActionResult{MessageID: fmt.Sprint(len(f.sent))}, nil
}

// respond is Respond over the fake agent and send: the same contract
// (turns of a prefix of the updates; stop at the first action not done;
// agent failures for good as turns; memory grown between the updates).
func (f *fakeActs) respond(ctx context.Context, in RespondInput) (RespondResult, error) {
	f.mu.Lock()
	f.responds = append(f.responds, in)
	remote := f.remote
	f.mu.Unlock()
	if in.Local && remote {
		return RespondResult{Remote: true}, nil
	}
	if in.Local && f.failLocal {
		return RespondResult{}, errors.New("local respond broke")
	}
	agent, send := f.agent, f.send
	if f.agentHook != nil {
		agent = f.agentHook
	}
	if f.sendHook != nil {
		send = f.sendHook
	}
	out := RespondResult{Local: !remote}
	memory := in.Memory
	for _, u := range in.Updates {
		res, err := agent(ctx, AgentInput{BotID: in.BotID, ChatID: in.ChatID, Update: u.Update, Memory: memory})
		if err != nil {
			var ae *temporal.ApplicationError
			if errors.As(err, &ae) && ae.NonRetryable() {
				out.Turns = append(out.Turns, Turn{AgentError: ae.Type()})
				break
			}
			if len(out.Turns) == 0 && !in.Local {
				return RespondResult{}, err
			}
			break
		}
		turn := Turn{Actions: res.Actions}
		replied := false
		for _, a := range res.Actions {
			ai := ActionInput{BotID: in.BotID, ChatID: in.ChatID, Action: a}
			if !replied && isReply(a.Type) {
				ai.ReceivedAt = u.ReceivedAt
			}
			if _, err := send(ctx, ai); err != nil {
				var ae *temporal.ApplicationError
				if errors.As(err, &ae) && ae.NonRetryable() {
					turn.ActionError = ae.Type()
				}
				break
			}
			replied = replied || isReply(a.Type)
			turn.Done++
		}
		out.Turns = append(out.Turns, turn)
		if turn.Done < len(res.Actions) {
			break
		}
		memory = appendMemory(memory, agents.MessageText(u.Update), sentTexts(res.Actions), in.MemoryTurns, in.MemoryChars)
	}
	return out, nil
}

func newTestEnv(t *testing.T, f *fakeActs) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	s.SetLogger(NewLogger(zerolog.Nop()))
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflowWithOptions(ChatWorkflow, workflow.RegisterOptions{Name: ChatWorkflowName})
	env.RegisterActivityWithOptions(f.agent, activity.RegisterOptions{Name: ActivityAgent})
	env.RegisterActivityWithOptions(f.send, activity.RegisterOptions{Name: ActivitySendMessage})
	env.RegisterActivityWithOptions(f.respond, activity.RegisterOptions{Name: ActivityRespond})
	env.RegisterActivityWithOptions(f.loadMark, activity.RegisterOptions{Name: ActivityLoadChatMark})
	env.RegisterActivityWithOptions(f.saveMark, activity.RegisterOptions{Name: ActivitySaveChatMark})
	return env
}

func textUpdate(id, chat, text string) buko.Update {
	return buko.Update{UpdateID: buko.UpdateID(id), Message: &buko.Message{
		MessageID: "m" + id, Chat: buko.Chat{ID: chat, Type: buko.ChatPrivate}, Text: text,
	}}
}

func testInput() ChatInput {
	return ChatInput{BotID: "bot_1", ChatID: "c1", Settings: Settings{
		IdleTimeout: time.Minute, RetryInitial: time.Millisecond, RetryMax: time.Millisecond, GiveUpAfter: time.Minute,
	}}
}

func signalAt(env *testsuite.TestWorkflowEnvironment, d time.Duration, u buko.Update) {
	env.RegisterDelayedCallback(func() { env.SignalWorkflow(SignalUpdate, u) }, d)
}

func TestChatWorkflowDedupesAndKeepsOrder(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	// 10 is ahead of 9 by length, not lexically: the comparison must be by length first.
	for i, id := range []string{"7", "9", "9", "7", "10", "8", "11"} {
		signalAt(env, time.Duration(i+1)*time.Second, textUpdate(id, "c1", "t"+id))
	}
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if !env.IsWorkflowCompleted() {
		t.Fatal("workflow did not complete after its idle timeout")
	}
	if err := env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error: %v", err)
	}
	var res ChatResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	want := []buko.UpdateID{"7", "9", "10", "11"}
	if fmt.Sprint(f.agentIDs) != fmt.Sprint(want) {
		t.Errorf("agent saw %v, want %v", f.agentIDs, want)
	}
	if got := strings.Join(f.sent, ","); got != "re:t7,re:t9,re:t10,re:t11" {
		t.Errorf("sent %q", got)
	}
	if res.Duplicates != 3 || res.Processed != 4 || res.LastUpdateID != "11" {
		t.Errorf("result %+v, want 3 duplicates, 4 processed, last 11", res)
	}
	// Memory grows turn by turn and reaches the agent.
	if last := f.memories[len(f.memories)-1]; len(last) != 6 || last[0].Text != "t7" || last[1].Text != "re:t7" {
		t.Errorf("memory passed to the last agent call: %+v", last)
	}
}

func TestChatWorkflowSignalsDuringActivityAreQueued(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	// Three signals at the same instant: all queue while the first is processed.
	for i, id := range []string{"1", "2", "3"} {
		signalAt(env, time.Second+time.Duration(i)*time.Microsecond, textUpdate(id, "c1", "x"+id))
	}
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:x1,re:x2,re:x3" {
		t.Errorf("sent %q", got)
	}
}

func TestChatWorkflowAgentFailureIsRecordedNotFatal(t *testing.T) {
	f := &fakeActs{failAgent: map[buko.UpdateID]error{
		"2": temporal.NewNonRetryableApplicationError("agent reply: malformed", ErrTypeAgentReply, nil),
	}}
	env := newTestEnv(t, f)
	for i, id := range []string{"1", "2", "3"} {
		signalAt(env, time.Duration(i+1)*time.Second, textUpdate(id, "c1", "y"+id))
	}
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res ChatResult
	_ = env.GetWorkflowResult(&res)
	if res.Failures != 1 || res.Processed != 3 {
		t.Errorf("result %+v: want 1 failure, 3 processed", res)
	}
	if got := strings.Join(f.sent, ","); got != "re:y1,"+FailureNotice+",re:y3" {
		t.Errorf("sent %q", got)
	}
}

func TestChatWorkflowSendRejectedStopsThatReplyOnly(t *testing.T) {
	f := &fakeActs{failSend: map[string]error{
		"re:z1": temporal.NewNonRetryableApplicationError("buko: sendMessage: HTTP 403 BOT_BLOCKED", buko.CodeBotBlocked, nil),
	}}
	env := newTestEnv(t, f)
	signalAt(env, time.Second, textUpdate("1", "c1", "z1"))
	signalAt(env, 2*time.Second, textUpdate("2", "c1", "z2"))
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:z2" {
		t.Errorf("sent %q", got)
	}
}

func TestChatWorkflowContinuesAsNewCarryingState(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	in := testInput()
	in.Settings.MaxUpdatesPerRun = 5
	in.State = ChatState{Runs: 2}
	for i := 1; i <= 12; i++ {
		signalAt(env, time.Second+time.Duration(i)*time.Millisecond, textUpdate(fmt.Sprint(i), "c1", fmt.Sprint("w", i)))
	}
	env.ExecuteWorkflow(ChatWorkflowName, in)
	err := env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	if !errors.As(err, &can) {
		t.Fatalf("want continue-as-new, got %v", err)
	}
	var next ChatInput
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	st := next.State
	if st.Runs != 3 || st.LastUpdateID == "" || st.Processed == 0 {
		t.Fatalf("carried state %+v", st)
	}
	if st.Processed != 5 || st.LastUpdateID != "5" {
		t.Errorf("processed %d up to %s, want 5 up to 5", st.Processed, st.LastUpdateID)
	}
	if len(st.Pending) > 0 && st.Pending[0].UpdateID.Compare(st.LastUpdateID) <= 0 {
		t.Errorf("pending starts at %s, not after %s", st.Pending[0].UpdateID, st.LastUpdateID)
	}
	if len(st.Memory) == 0 {
		t.Error("memory not carried")
	}
	if next.BotID != "bot_1" || next.ChatID != "c1" || next.Settings.MaxUpdatesPerRun != 5 {
		t.Errorf("identity/settings not carried: %+v", next)
	}
}

func TestChatWorkflowDropsRedeliveryAfterContinueAsNew(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	in := testInput()
	in.State = ChatState{LastUpdateID: "41", Runs: 1}
	signalAt(env, time.Second, textUpdate("41", "c1", "old"))
	signalAt(env, 2*time.Second, textUpdate("40", "c1", "older"))
	signalAt(env, 3*time.Second, textUpdate("42", "c1", "new"))
	env.ExecuteWorkflow(ChatWorkflowName, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var res ChatResult
	_ = env.GetWorkflowResult(&res)
	if res.Duplicates != 2 || fmt.Sprint(f.agentIDs) != "[42]" {
		t.Errorf("result %+v, agent saw %v", res, f.agentIDs)
	}
}

func TestChatWorkflowProcessesCarriedPendingFirst(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	in := testInput()
	in.State = ChatState{LastUpdateID: "5", Pending: []UpdateSignal{
		{Update: textUpdate("6", "c1", "p6")}, {Update: textUpdate("5", "c1", "p5")}, {Update: textUpdate("7", "c1", "p7")},
	}}
	signalAt(env, time.Second, textUpdate("8", "c1", "p8"))
	env.ExecuteWorkflow(ChatWorkflowName, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.sent, ","); got != "re:p6,re:p7,re:p8" {
		t.Errorf("sent %q", got)
	}
}

func TestChatWorkflowDropsInvalidSignals(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	signalAt(env, time.Second, textUpdate("5", "c1", "a"))
	signalAt(env, 2*time.Second, buko.Update{}) // does not decode (empty update_id): the SDK drops it
	signalAt(env, 3*time.Second, textUpdate("6", "other-chat", "b"))
	signalAt(env, 4*time.Second, textUpdate("5", "c1", "a again"))
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	var res ChatResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if res.LastUpdateID != "5" || res.Duplicates != 1 || res.Failures != 1 || fmt.Sprint(f.agentIDs) != "[5]" {
		t.Errorf("result %+v, agent saw %v", res, f.agentIDs)
	}
}

// A signal that does not decode, arriving while the workflow waits for its
// quiet time, is dropped without holding the workflow open: it still ends
// after its idle timeout.
func TestChatWorkflowEndsIdleAfterUndecodableSignal(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	signalAt(env, time.Second, textUpdate("5", "c1", "a"))
	env.RegisterDelayedCallback(func() { env.SignalWorkflow(SignalUpdate, "not an update") }, 2*time.Second)
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if !env.IsWorkflowCompleted() {
		t.Fatal("workflow did not end after its idle timeout")
	}
	var res ChatResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if res.LastUpdateID != "5" || res.Processed != 1 || fmt.Sprint(f.agentIDs) != "[5]" {
		t.Errorf("result %+v, agent saw %v", res, f.agentIDs)
	}
}

func TestChatWorkflowRejectsEmptyInput(t *testing.T) {
	env := newTestEnv(t, &fakeActs{})
	env.ExecuteWorkflow(ChatWorkflowName, ChatInput{})
	if err := env.GetWorkflowError(); err == nil {
		t.Fatal("want an error for an input without bot and chat")
	}
}

func TestTrimMemory(t *testing.T) {
	var m []agents.Turn
	for i := 0; i < 30; i++ {
		m = append(m, agents.Turn{Role: agents.RoleUser, Text: strings.Repeat("a", 10)})
	}
	if got := trimMemory(m, 20, 1000); len(got) != 20 {
		t.Errorf("turn bound: %d", len(got))
	}
	if got := trimMemory(m, 20, 55); len(got) != 5 {
		t.Errorf("char bound: %d", len(got))
	}
}

func TestChatWorkflowDefersContinueAsNewOverCarryBound(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	in := testInput()
	in.Settings.MaxUpdatesPerRun = 2
	in.Settings.MaxCarryUpdates = 3
	// Ten pending updates: after two the run wants to continue-as-new with
	// eight pending, over the carry bound of three: it works them off until
	// three are left, then continues-as-new carrying exactly those.
	in.State = ChatState{Runs: 1}
	for i := 1; i <= 10; i++ {
		in.State.Pending = append(in.State.Pending, UpdateSignal{Update: textUpdate(fmt.Sprint(i), "c1", fmt.Sprint("q", i))})
	}
	env.ExecuteWorkflow(ChatWorkflowName, in)
	var can *workflow.ContinueAsNewError
	if err := env.GetWorkflowError(); !errors.As(err, &can) {
		t.Fatalf("want continue-as-new, got %v", err)
	}
	var next ChatInput
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	if n := len(next.State.Pending); n != 3 || next.State.LastUpdateID != "7" || next.State.Processed != 7 {
		t.Fatalf("carried %d pending, last %s, processed %d; want 3 pending after 7", n, next.State.LastUpdateID, next.State.Processed)
	}
	if next.State.Pending[0].UpdateID != "8" {
		t.Errorf("carried pending starts at %s", next.State.Pending[0].UpdateID)
	}
}

func TestChatWorkflowContinuesAsNewAfterSignalShare(t *testing.T) {
	f := &fakeActs{}
	env := newTestEnv(t, f)
	in := testInput()
	in.Settings.MaxSignalsPerRun = 4
	in.State = ChatState{Runs: 1}
	for i := 1; i <= 6; i++ {
		signalAt(env, time.Duration(i)*time.Second, textUpdate(fmt.Sprint(i), "c1", fmt.Sprint("s", i)))
	}
	env.ExecuteWorkflow(ChatWorkflowName, in)
	var can *workflow.ContinueAsNewError
	if err := env.GetWorkflowError(); !errors.As(err, &can) {
		t.Fatalf("want continue-as-new after 4 signals, got %v", err)
	}
	var next ChatInput
	_ = converter.GetDefaultDataConverter().FromPayloads(can.Input, &next)
	if next.State.Processed != 4 || len(next.State.Pending) != 0 {
		t.Errorf("carried %+v", next.State)
	}
}

func TestChatWorkflowWatermarkOutlivesTheRun(t *testing.T) {
	// First chain: handles 5 and 6, ends for quiet time and saves 6.
	f := &fakeActs{}
	env := newTestEnv(t, f)
	signalAt(env, time.Second, textUpdate("5", "c1", "a"))
	signalAt(env, 2*time.Second, textUpdate("6", "c1", "b"))
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(f.saved) != "[6]" || f.loads != 1 {
		t.Fatalf("saved %v after %d loads, want [6] after 1", f.saved, f.loads)
	}
	// A fresh chain much later: 6 redelivered is dropped, 7 is handled, 7 saved.
	env = newTestEnv(t, f)
	signalAt(env, time.Second, textUpdate("6", "c1", "b"))
	signalAt(env, 2*time.Second, textUpdate("7", "c1", "c"))
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	var res ChatResult
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if res.Duplicates != 1 || res.Processed != 1 || fmt.Sprint(f.agentIDs) != "[5 6 7]" || fmt.Sprint(f.saved) != "[6 7]" {
		t.Errorf("result %+v, agent saw %v, saved %v", res, f.agentIDs, f.saved)
	}
	// A chain that handles nothing new writes nothing.
	env = newTestEnv(t, f)
	signalAt(env, time.Second, textUpdate("7", "c1", "c"))
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(f.saved) != "[6 7]" {
		t.Errorf("saved %v: a mark that did not grow was written", f.saved)
	}
	// A continued run does not read the mark again (it carries it).
	loads := f.loads
	env = newTestEnv(t, f)
	in := testInput()
	in.State = ChatState{Runs: 1, LastUpdateID: "7", Mark: "7"}
	signalAt(env, time.Second, textUpdate("8", "c1", "d"))
	env.ExecuteWorkflow(ChatWorkflowName, in)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if f.loads != loads || fmt.Sprint(f.saved) != "[6 7 8]" {
		t.Errorf("loads %d→%d, saved %v", loads, f.loads, f.saved)
	}
}
