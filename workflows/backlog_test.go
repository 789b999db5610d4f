package workflows

// Integration tests (real Temporal dev server) of the run bounds and of the
// durable chat watermark: a chat whose agent is stuck while thousands of
// updates arrive, and a redelivery after the chat's workflow ended.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/permanent"
	"buko.app/agentrunner/workflows/agents"
)

// gateAgent holds every call until opened, then answers with no actions. It
// records the update ids it answered, in order.
type gateAgent struct {
	mu       sync.Mutex
	open     chan struct{}
	once     sync.Once
	answered []buko.UpdateID
	waiting  int
}

func newGateAgent() *gateAgent { return &gateAgent{open: make(chan struct{})} }

func (g *gateAgent) release() { g.once.Do(func() { close(g.open) }) }

func (g *gateAgent) Handle(ctx context.Context, req agents.Request) ([]agents.Action, error) {
	g.mu.Lock()
	g.waiting++
	g.mu.Unlock()
	defer func() { g.mu.Lock(); g.waiting--; g.mu.Unlock() }()
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	g.mu.Lock()
	g.answered = append(g.answered, req.Update.UpdateID)
	g.mu.Unlock()
	return nil, nil
}

func (g *gateAgent) state() (answered, waiting int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.answered), g.waiting
}

// lane hands ups off in order like a session lane: a transient error is
// retried with back-off, a permanent one fails the test.
type lane struct {
	mu         sync.Mutex
	handed     int
	backlogged int
	runLimited int
	done       chan struct{}
}

func (e *env) runLane(t *testing.T, botID string, ups []buko.Update) *lane {
	l := &lane{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for _, u := range ups {
			for attempt := 0; ; attempt++ {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := e.handoff.Handoff(ctx, botID, u)
				cancel()
				if err == nil {
					break
				}
				if permanent.Is(err) {
					t.Errorf("handoff of %s failed permanently: %v", u.UpdateID, err)
					return
				}
				var bl *BackloggedError
				var rl *RunLimitError
				l.mu.Lock()
				switch {
				case errors.As(err, &bl):
					l.backlogged++
				case errors.As(err, &rl):
					l.runLimited++
				}
				l.mu.Unlock()
				time.Sleep(min(10*time.Millisecond<<min(attempt, 4), 100*time.Millisecond)) // the caller's retry backoff under test
			}
			l.mu.Lock()
			l.handed++
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *lane) counts() (handed, backlogged, runLimited int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.handed, l.backlogged, l.runLimited
}

// chainRuns walks a chat workflow's continue-as-new chain from its current
// run back to its first and returns, oldest first, each run's status and the
// size of its input payload.
type chainRun struct {
	runID  string
	status enumspb.WorkflowExecutionStatus
	input  int
}

func (e *env) chainRuns(t *testing.T, id string) []chainRun {
	t.Helper()
	ctx := context.Background()
	d, err := e.c.DescribeWorkflow(ctx, id, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []chainRun
	runID := d.RawResponse.WorkflowExecutionInfo.Execution.RunId
	for runID != "" {
		d, err := e.c.DescribeWorkflow(ctx, id, runID)
		if err != nil {
			t.Fatal(err)
		}
		it := e.c.GetWorkflowHistory(ctx, id, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		attrs := ev.GetWorkflowExecutionStartedEventAttributes()
		size := 0
		for _, p := range attrs.GetInput().GetPayloads() {
			size += len(p.GetData())
		}
		out = append([]chainRun{{runID: runID, status: d.RawResponse.WorkflowExecutionInfo.Status, input: size}}, out...)
		runID = attrs.GetContinuedExecutionRunId()
	}
	return out
}

func TestIntegrationBacklogOfThousandsBlockedAgent(t *testing.T) {
	e := newEnv(t)
	const n = 2000
	s := fastSettings()
	s.AgentTimeout = 5 * time.Minute // the agent blocks for as long as the test wants
	s.MaxHistoryEvents = 2000        // as the server's suggestion would, sooner: a run wants to continue-as-new
	s.MemoryTurns = 2                // memory is not under test here; small agent inputs keep the test fast
	e.handoff.WithSettings(s)
	gate := newGateAgent()
	reg := agents.Builtin()
	reg["gate"] = func(json.RawMessage) (agents.Agent, error) { return gate, nil }
	e.startWorker(WorkerOptions{Agents: reg})
	bot := BotSpec{ID: "bot_backlog_" + testsupport.RandHex(3), Handle: "backlog_bot", DisplayName: "Backlog", Tier: TierOfficial, Agent: "gate"}
	e.bots.set(bot)
	chat := "spc_backlog_" + testsupport.RandHex(3)
	ups := make([]buko.Update, n)
	for i := range ups {
		ups[i] = textUpdate(fmt.Sprint(100000+i), chat, testsupport.RandHex(512)) // 1 KiB of text each
	}
	id := WorkflowID(bot.ID, chat)

	l := e.runLane(t, bot.ID, ups)
	// The agent holds the first update; the lane hands off until the chat
	// is held back (or, without back-pressure, everything went in).
	testsupport.Until(t, "the lane to be held back or done", waitLimit, func() (bool, string) {
		h, b, r := l.counts()
		select {
		case <-l.done:
			return true, "done"
		default:
		}
		return b > 0, fmt.Sprintf("handed %d, backlogged %d, run limit %d", h, b, r)
	})
	h, b, _ := l.counts()
	t.Logf("before release: %d handed off, %d attempts held back", h, b)
	gate.release()

	// No deadline for the whole backlog (a slow machine is not a failure):
	// the test fails when answers stop coming.
	const stall = 3 * time.Minute
	last, lastAt := -1, time.Now()
	for {
		answered, _ := gate.state()
		if answered >= n {
			break
		}
		if answered != last {
			last, lastAt = answered, time.Now()
		}
		d, err := e.c.DescribeWorkflow(context.Background(), id, "")
		if err == nil && d.RawResponse.WorkflowExecutionInfo.Status == enumspb.WORKFLOW_EXECUTION_STATUS_TERMINATED {
			h, _, _ := l.counts()
			t.Fatalf("the chat workflow was terminated after %d of %d updates were answered (%d handed off): backlog lost", answered, n, h)
		}
		if time.Since(lastAt) > stall {
			h, b, r := l.counts()
			t.Fatalf("no answer for %v: %d of %d answered (%d handed off, %d held back, %d run limit)", stall, answered, n, h, b, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	<-l.done
	gate.mu.Lock()
	answered := append([]buko.UpdateID(nil), gate.answered...)
	gate.mu.Unlock()
	for i, u := range ups {
		if i >= len(answered) || answered[i] != u.UpdateID {
			t.Fatalf("answer %d is %v, want %s: not every update once, in order", i, answered[min(i, len(answered)-1)], u.UpdateID)
		}
	}
	if len(answered) != n {
		t.Fatalf("%d answers for %d updates", len(answered), n)
	}
	testsupport.Until(t, "the chain's state", waitLimit, func() (bool, string) {
		st, err := e.state(bot.ID, chat)
		return err == nil && st.Processed == n && st.Pending == 0, fmt.Sprintf("%+v %v", st, err)
	})
	if st, _ := e.state(bot.ID, chat); st.Duplicates != 0 || st.Failures != 0 {
		t.Errorf("state %+v", st)
	}
	runs := e.chainRuns(t, id)
	limit := DefaultSettings().MaxCarryBytes + 64<<10 // pending plus memory (≤ 16,000 chars) and counters
	for i, r := range runs {
		if i < len(runs)-1 && r.status != enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW {
			t.Errorf("run %d of %d: %s", i+1, len(runs), r.status)
		}
		if r.input > limit {
			t.Errorf("run %d started with a %d-byte input, over %d", i+1, r.input, limit)
		}
	}
	resp, err := e.c.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{
		Namespace: e.ns, Query: fmt.Sprintf("WorkflowId = %q", id),
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range resp.Executions {
		if ex.Status == enumspb.WORKFLOW_EXECUTION_STATUS_TERMINATED || ex.Status == enumspb.WORKFLOW_EXECUTION_STATUS_FAILED {
			t.Errorf("run %s: %s", ex.Execution.RunId, ex.Status)
		}
	}
	maxIn := 0
	for _, r := range runs {
		maxIn = max(maxIn, r.input)
	}
	_, b, rl := l.counts()
	t.Logf("%d updates answered once, in order, across %d runs; largest run input %d bytes; %d handoff attempts held back, %d run-limit refusals",
		n, len(runs), maxIn, b, rl)
}

func TestIntegrationRedeliveryAfterIdleEndNotAnsweredTwice(t *testing.T) {
	e := newEnv(t)
	s := fastSettings()
	s.IdleTimeout = 2 * time.Second
	e.handoff.WithSettings(s)
	e.startWorker(WorkerOptions{})
	bot := e.newBot("rotate_bot", "echo", nil)
	user := e.newUser("Rita")
	chat := e.startChat(user, bot.ID)
	e.say(chat, user, "answer me once "+testsupport.RandHex(4))
	ups := e.updates(bot, 3)
	for _, u := range ups {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "greeting and echo", waitLimit, func() (bool, string) {
		r := e.botReplies(chat)
		return len(r) == 2, fmt.Sprint(replyTexts(r))
	})
	id := WorkflowID(bot.ID, chat)
	ended := func(runID string) func() (bool, string) {
		return func() (bool, string) {
			d, err := e.c.DescribeWorkflow(context.Background(), id, "")
			if err != nil {
				return false, err.Error()
			}
			info := d.RawResponse.WorkflowExecutionInfo
			return info.Execution.RunId != runID && info.Status == enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED, info.Status.String()
		}
	}
	testsupport.Until(t, "the chat workflow to end for quiet time", waitLimit, ended(""))
	first, _ := e.c.DescribeWorkflow(context.Background(), id, "")

	// Much later (a token rotation, a new owner): Buko redelivers the last update.
	e.hand(bot.ID, ups[2])
	testsupport.Until(t, "the redelivery's run to end", waitLimit, ended(first.RawResponse.WorkflowExecutionInfo.Execution.RunId))
	var res ChatResult
	if err := e.c.GetWorkflow(context.Background(), id, "").Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	if r := e.botReplies(chat); len(r) != 2 || res.Processed != 0 || res.Duplicates != 1 {
		t.Fatalf("after the redelivery: replies %q, run result %+v; want 2 replies, the redelivery dropped", replyTexts(r), res)
	}
	// A new update is still answered.
	e.say(chat, user, "and this one too "+testsupport.RandHex(4))
	for _, u := range e.updates(bot, 1) {
		e.hand(bot.ID, u)
	}
	testsupport.Until(t, "the new update's reply", waitLimit, func() (bool, string) {
		r := e.botReplies(chat)
		return len(r) == 3, fmt.Sprint(replyTexts(r))
	})
	if r := replyTexts(e.botReplies(chat)); !strings.HasPrefix(r[2], "and this one too") {
		t.Errorf("replies %q", r)
	}
}
