package workflows

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows/agents"
)

// Version markers (workflow.GetVersion change ids). Add a new one for every
// change that alters the commands a workflow issues; never remove one while a
// history that lacks it may still run (see docs/workflows.md).
const (
	// versionFailureNotice: after an agent fails for good, tell the chat so.
	versionFailureNotice = "failure-notice"
	// versionBoundedRuns (checked once at the start of every run): continue-
	// as-new also on signals and history bytes per run, never carry more than
	// the carry bound, and the durable chat watermark (read by a fresh run,
	// written before the idle end).
	versionBoundedRuns = "bounded-runs"
	// versionLeanTurns (checked once at the start of every run that has
	// bounded-runs): one quiet-time timer per quiet time, not per update;
	// the agent and its actions in one Respond activity, local (a batch of
	// the pending updates in one workflow task) for the agents that run in
	// the worker (docs/workflows.md, "Event budget").
	versionLeanTurns = "lean-turns"
)

// FailureNotice is what a chat is told when its bot's agent could not handle a message.
const FailureNotice = "Sorry, I couldn't handle that message."

// Workflow metric names (emitted through the SDK's replay-safe metrics handler).
const (
	metricDuplicates    = "agentrunner_workflows_duplicate_updates_total"
	metricProcessed     = "agentrunner_workflows_updates_processed_total"
	metricAgentFailures = "agentrunner_workflows_agent_failures_total"
	metricActionFailed  = "agentrunner_workflows_action_failures_total"
	metricContinued     = "agentrunner_workflows_continue_as_new_total"
	metricIdleEnded     = "agentrunner_workflows_idle_ended_total"
	metricCarryDeferred = "agentrunner_workflows_carry_deferred_total"
)

// ChatWorkflow processes one chat's updates, in order, one at a time: it drops
// update ids it has already processed, runs the bot's agent as an activity,
// then performs the agent's actions as activities. It continues-as-new before
// the history grows large (carrying dedupe state, memory and pending signals)
// and ends after Settings.IdleTimeout without updates.
func ChatWorkflow(ctx workflow.Context, in ChatInput) (ChatResult, error) {
	return chatWorkflow(ctx, in, true)
}

// chatWorkflow is ChatWorkflow; with leanTurns false it issues the commands
// of the release before versionLeanTurns (no marker), which tests use to
// start a workflow on the old code and finish it on the new.
func chatWorkflow(ctx workflow.Context, in ChatInput, leanTurns bool) (ChatResult, error) {
	c := &chat{in: in, st: in.State, s: in.Settings.withDefaults()}
	c.st.Runs = in.State.Runs
	c.sizes = make([]int, len(c.st.Pending))
	for i, u := range c.st.Pending {
		c.sizes[i] = SignalSize(u)
		c.pendingBytes += c.sizes[i]
	}
	if in.BotID == "" || in.ChatID == "" {
		return ChatResult{}, temporal.NewNonRetryableApplicationError("chat workflow needs bot_id and chat_id", ErrTypeBadInput, nil)
	}
	if err := workflow.SetQueryHandler(ctx, QueryState, c.view); err != nil {
		return ChatResult{}, fmt.Errorf("set query handler: %w", err)
	}
	c.bounded = workflow.GetVersion(ctx, versionBoundedRuns, workflow.DefaultVersion, 1) >= 1
	if c.bounded && leanTurns {
		c.lean = workflow.GetVersion(ctx, versionLeanTurns, workflow.DefaultVersion, 1) >= 1
		c.lastActive = workflow.Now(ctx)
	}
	if c.bounded && in.State.Runs == 0 && in.State.LastUpdateID == "" {
		// A fresh chain (not a continue-as-new): what did earlier chains of this chat handle?
		c.loadMark(ctx)
	}
	return c.run(ctx)
}

type chat struct {
	in      ChatInput
	st      ChatState
	s       Settings
	thisRun int // updates taken from Pending in this run

	bounded      bool  // versionBoundedRuns in effect for this run
	sizes        []int // SignalSize of each st.Pending entry
	pendingBytes int   // their sum: what a continue-as-new would carry
	signals      int   // signals received in this run
	signalBytes  int   // their SignalSize sum
	deferred     bool  // a continue-as-new was deferred in this run (over the carry bound)

	lean       bool            // versionLeanTurns in effect for this run
	idle       workflow.Future // the quiet-time timer, while one is armed (lean)
	lastActive time.Time       // when the last updates were answered (lean)
	taken      time.Time       // when the last updates were taken (lean)
	localRan   bool            // a local Respond ran since the last flush (lean)
}

// SignalSize is the size by which runs and the Handoff measure an update
// signal: the length of its JSON encoding (the payload codec adds a few
// dozen bytes of its own).
func SignalSize(u UpdateSignal) int {
	b, err := json.Marshal(u)
	if err != nil {
		return 0
	}
	return len(b)
}

// push appends a received signal to Pending and counts it.
func (c *chat) push(u UpdateSignal) {
	n := SignalSize(u)
	c.st.Pending = append(c.st.Pending, u)
	c.sizes = append(c.sizes, n)
	c.pendingBytes += n
	c.signals++
	c.signalBytes += n
}

// pop takes the oldest pending update.
func (c *chat) pop() UpdateSignal {
	u := c.st.Pending[0]
	c.st.Pending = c.st.Pending[1:]
	c.pendingBytes -= c.sizes[0]
	c.sizes = c.sizes[1:]
	return u
}

func (c *chat) view() (StateView, error) {
	return StateView{
		LastUpdateID: c.st.LastUpdateID,
		Pending:      len(c.st.Pending),
		PendingBytes: c.pendingBytes,
		Mark:         c.st.Mark,
		Processed:    c.st.Processed,
		Duplicates:   c.st.Duplicates,
		Failures:     c.st.Failures,
		Runs:         c.st.Runs,
		MemoryTurns:  len(c.st.Memory),
		LastError:    c.st.LastError,
	}, nil
}

func (c *chat) result() ChatResult {
	return ChatResult{LastUpdateID: c.st.LastUpdateID, Processed: c.st.Processed, Duplicates: c.st.Duplicates, Failures: c.st.Failures}
}

func (c *chat) run(ctx workflow.Context) (ChatResult, error) {
	log := workflow.GetLogger(ctx)
	updates := workflow.GetSignalChannel(ctx, SignalUpdate)
	for {
		// Take whatever has arrived, without blocking.
		c.drain(ctx, updates)
		if len(c.st.Pending) == 0 {
			await := c.awaitUpdate
			if c.lean {
				await = c.awaitLean
			}
			got, err := await(ctx, updates)
			if err != nil {
				return c.result(), err
			}
			if !got {
				if c.bounded {
					// The chat's watermark first: the run must not end before it
					// is durable, or a late redelivery would be answered again.
					saved := c.saveMark(ctx)
					c.drain(ctx, updates)
					if !saved || len(c.st.Pending) > 0 {
						continue
					}
				}
				// Quiet long enough, and nothing arrived meanwhile: end. A signal
				// racing with the completion fails it and the task is replayed
				// with that signal, so nothing is lost.
				workflow.GetMetricsHandler(ctx).Counter(metricIdleEnded).Inc(1)
				log.Info("chat workflow idle; ending", "processed", c.st.Processed)
				return c.result(), nil
			}
			continue
		}
		if c.lean {
			c.respondPending(ctx)
		} else {
			u := c.pop()
			c.thisRun++
			c.process(ctx, u)
		}
		if c.shouldContinueAsNew(ctx) {
			if c.localRan {
				// Local activities are recorded only when their workflow task
				// completes, and Temporal refuses a completion that closes
				// the run while a signal is arriving, replaying the task: a
				// local Respond of this task would run, and send, again. A
				// short timer ends this task first, without closing anything.
				if err := workflow.Sleep(ctx, time.Millisecond); err != nil {
					return c.result(), err
				}
				c.localRan = false
			}
			c.drain(ctx, updates)
			if c.bounded && !c.carryFits() {
				// Carrying this backlog could exceed Temporal's payload limit,
				// and signals left in the channel would be lost with the run:
				// keep working it off here. The Handoff holds new signals back
				// meanwhile (chat backlogged), so the run stays bounded.
				if !c.deferred {
					c.deferred = true
					workflow.GetMetricsHandler(ctx).Counter(metricCarryDeferred).Inc(1)
					log.Info("continue-as-new deferred: backlog over the carry bound", "pending", len(c.st.Pending), "pending_bytes", c.pendingBytes)
				}
				continue
			}
			next := c.in
			next.State = c.st
			next.State.Runs++
			workflow.GetMetricsHandler(ctx).Counter(metricContinued).Inc(1)
			log.Info("continuing as new", "events", workflow.GetInfo(ctx).GetCurrentHistoryLength(), "pending", len(c.st.Pending))
			return c.result(), workflow.NewContinueAsNewError(ctx, ChatWorkflowName, next)
		}
	}
}

// drain moves every signal already received into Pending.
func (c *chat) drain(ctx workflow.Context, ch workflow.ReceiveChannel) {
	for {
		var u UpdateSignal
		if !ch.ReceiveAsync(&u) {
			return
		}
		c.push(u)
	}
}

// awaitUpdate blocks until an update arrives (true) or the idle timer fires (false).
func (c *chat) awaitUpdate(ctx workflow.Context, ch workflow.ReceiveChannel) (bool, error) {
	tctx, cancel := workflow.WithCancel(ctx)
	defer cancel()
	timer := workflow.NewTimer(tctx, c.s.IdleTimeout)
	got, fired, timerDone := false, false, false
	sel := workflow.NewSelector(ctx)
	sel.AddReceive(ch, func(rc workflow.ReceiveChannel, _ bool) {
		// ReceiveAsync, not Receive: the SDK drops a signal whose payload does
		// not decode (the codec refuses it), and Receive would then block in
		// this callback until the next good signal, past the idle timer.
		var u UpdateSignal
		if rc.ReceiveAsync(&u) {
			c.push(u)
			got = true
		}
	})
	sel.AddFuture(timer, func(f workflow.Future) {
		timerDone = true
		if err := f.Get(ctx, nil); err == nil {
			fired = true
		}
	})
	for !got && !timerDone {
		sel.Select(ctx)
	}
	if got {
		return true, nil
	}
	if !fired {
		return false, errors.New("idle timer ended without firing")
	}
	c.drain(ctx, ch)
	return len(c.st.Pending) > 0, nil
}

func (c *chat) shouldContinueAsNew(ctx workflow.Context) bool {
	info := workflow.GetInfo(ctx)
	if info.GetContinueAsNewSuggested() || info.GetCurrentHistoryLength() >= c.s.MaxHistoryEvents ||
		c.thisRun >= c.s.MaxUpdatesPerRun {
		return true
	}
	return c.bounded && (c.signals >= c.s.MaxSignalsPerRun || c.signalBytes >= c.s.MaxSignalBytesPerRun ||
		info.GetCurrentHistorySize() >= c.s.MaxHistoryBytes)
}

// carryFits reports whether the pending backlog is within the carry bound.
func (c *chat) carryFits() bool {
	return len(c.st.Pending) <= c.s.MaxCarryUpdates && c.pendingBytes <= c.s.MaxCarryBytes
}

// process handles one update: dedupe, agent, actions, memory.
func (c *chat) process(ctx workflow.Context, sig UpdateSignal) {
	u := sig.Update
	log := workflow.GetLogger(ctx)
	metrics := workflow.GetMetricsHandler(ctx)
	if !c.accept(ctx, u, c.st.LastUpdateID) {
		return
	}
	defer c.done(ctx, u)

	var out AgentOutput
	actx := workflow.WithActivityOptions(ctx, c.agentOptions())
	err := workflow.ExecuteActivity(actx, ActivityAgent, AgentInput{
		BotID: c.in.BotID, ChatID: c.in.ChatID, Update: u, Memory: c.st.Memory,
	}).Get(ctx, &out)
	if err != nil {
		c.st.Failures++
		c.st.LastError = fmt.Sprintf("update %s: agent: %s", u.UpdateID, errorSummary(err))
		metrics.Counter(metricAgentFailures).Inc(1)
		log.Warn("agent failed; update recorded as failed", "update_id", string(u.UpdateID), "error_type", errorType(err))
		if workflow.GetVersion(ctx, versionFailureNotice, workflow.DefaultVersion, 1) == 1 && u.Message != nil {
			// Not a reply to measure: the agent failure already counts against the reply SLO.
			c.perform(ctx, u, agents.Action{Type: agents.ActionSend, Text: FailureNotice, ReplyToMessageID: u.Message.MessageID}, time.Time{})
		}
		return
	}
	sent := make([]string, 0, len(out.Actions))
	replied := false
	for _, a := range out.Actions {
		var recv time.Time
		if !replied && isReply(a.Type) {
			recv = sig.ReceivedAt // the first reply measures the update's reply latency
		}
		if !c.perform(ctx, u, a, recv) {
			break
		}
		replied = replied || isReply(a.Type)
		if a.Type == agents.ActionSend {
			sent = append(sent, a.Text)
		}
	}
	c.remember(agents.MessageText(u), sent)
}

// accept reports whether u is a valid update of this chat above last (the
// highest update id handled); it counts and logs what it drops.
func (c *chat) accept(ctx workflow.Context, u buko.Update, last buko.UpdateID) bool {
	log := workflow.GetLogger(ctx)
	if !u.UpdateID.Valid() || u.ChatID() != c.in.ChatID {
		// Not from the Handoff (a corrupted or hand-made signal): never let it
		// touch the dedupe state.
		c.st.Failures++
		c.st.LastError = "dropped a signal that is not a valid update of this chat"
		log.Warn("dropping invalid update signal")
		return false
	}
	if last != "" && u.UpdateID.Compare(last) <= 0 {
		c.st.Duplicates++
		workflow.GetMetricsHandler(ctx).Counter(metricDuplicates).Inc(1)
		log.Debug("dropping already processed update", "update_id", string(u.UpdateID), "last_update_id", string(last))
		return false
	}
	return true
}

// done records u as handled (answered, or failed for good).
func (c *chat) done(ctx workflow.Context, u buko.Update) {
	c.st.LastUpdateID = u.UpdateID
	c.st.Processed++
	workflow.GetMetricsHandler(ctx).Counter(metricProcessed).Inc(1)
}

// perform runs one action as its activity; false means stop this reply's
// remaining actions (the chat refuses the bot, or the action failed for good).
// recv, when set, is the update's receipt time (see ActionInput.ReceivedAt).
func (c *chat) perform(ctx workflow.Context, u buko.Update, a agents.Action, recv time.Time) bool {
	name, ok := activityFor(a.Type)
	if !ok {
		c.st.LastError = fmt.Sprintf("update %s: unknown action type", u.UpdateID)
		return true
	}
	sctx := workflow.WithActivityOptions(ctx, c.sendOptions())
	err := workflow.ExecuteActivity(sctx, name, ActionInput{BotID: c.in.BotID, ChatID: c.in.ChatID, Action: a, ReceivedAt: recv}).Get(ctx, nil)
	if err == nil {
		return true
	}
	c.st.Failures++
	c.st.LastError = fmt.Sprintf("update %s: %s: %s", u.UpdateID, name, errorSummary(err))
	workflow.GetMetricsHandler(ctx).Counter(metricActionFailed).Inc(1)
	workflow.GetLogger(ctx).Warn("action failed", "update_id", string(u.UpdateID), "activity", name, "error_type", errorType(err))
	return false
}

// isReply reports whether an action of type t posts a message to the chat.
func isReply(t string) bool {
	return t == agents.ActionSend || t == agents.ActionPhoto || t == agents.ActionDocument
}

func activityFor(t string) (string, bool) {
	switch t {
	case agents.ActionSend:
		return ActivitySendMessage, true
	case agents.ActionEdit:
		return ActivityEditMessageText, true
	case agents.ActionDelete:
		return ActivityDeleteMessage, true
	case agents.ActionTyping:
		return ActivitySendChatAction, true
	case agents.ActionPhoto:
		return ActivitySendPhoto, true
	case agents.ActionDocument:
		return ActivitySendDocument, true
	}
	return "", false
}

// remember appends the user's text and the bot's replies to the memory and
// trims it to MemoryTurns turns and MemoryChars characters.
func (c *chat) remember(user string, replies []string) {
	c.st.Memory = appendMemory(c.st.Memory, user, replies, c.s.MemoryTurns, c.s.MemoryChars)
}

func trimMemory(m []agents.Turn, turns, chars int) []agents.Turn {
	if len(m) > turns {
		m = m[len(m)-turns:]
	}
	total := 0
	for i := len(m) - 1; i >= 0; i-- {
		total += utf8.RuneCountInString(m[i].Text)
		if total > chars {
			m = m[i+1:]
			break
		}
	}
	return append([]agents.Turn(nil), m...)
}

func (c *chat) retryPolicy() *temporal.RetryPolicy {
	return &temporal.RetryPolicy{
		InitialInterval:    c.s.RetryInitial,
		BackoffCoefficient: 2,
		MaximumInterval:    c.s.RetryMax,
		NonRetryableErrorTypes: []string{
			ErrTypeAgentReply, ErrTypeAgentConfig, ErrTypeBotUnknown, ErrTypeBadInput,
		},
	}
}

func (c *chat) agentOptions() workflow.ActivityOptions {
	return workflow.ActivityOptions{
		StartToCloseTimeout:    c.s.AgentTimeout,
		ScheduleToCloseTimeout: c.s.GiveUpAfter,
		RetryPolicy:            c.retryPolicy(),
		Priority:               temporal.Priority{FairnessKey: c.in.BotID},
	}
}

func (c *chat) sendOptions() workflow.ActivityOptions {
	return workflow.ActivityOptions{
		StartToCloseTimeout:    c.s.SendTimeout,
		ScheduleToCloseTimeout: c.s.GiveUpAfter,
		RetryPolicy:            c.retryPolicy(),
		Priority:               temporal.Priority{FairnessKey: c.in.BotID},
	}
}

// errorType returns the application error type of an activity failure, or "".
func errorType(err error) string {
	var ae *temporal.ApplicationError
	if errors.As(err, &ae) {
		return ae.Type()
	}
	var te *temporal.TimeoutError
	if errors.As(err, &te) {
		return "TIMEOUT"
	}
	return ""
}

// errorSummary is the short, text-free description kept in the workflow state.
func errorSummary(err error) string {
	if t := errorType(err); t != "" {
		return t
	}
	var ae *temporal.ApplicationError
	if errors.As(err, &ae) {
		return "application error"
	}
	return "failed"
}
