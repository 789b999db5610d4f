package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows/agents"
)

// The lean path of ChatWorkflow (versionLeanTurns): what an update costs in
// history is a signal, a share of a workflow task and, for the agents that
// run in the worker, a share of one local-activity marker (docs/workflows.md,
// "Event budget").

// maxLocalBatch bounds the updates one local Respond takes: a worker that
// dies during the workflow task sends at most that many replies again.
const maxLocalBatch = 10

// linger is how long the local Respond of a busy chat keeps its workflow
// task open after its replies are out (RespondInput.Linger), so that the
// next task takes the updates arriving meanwhile together. A chat is busy
// when its task found more than one update, or when the update it answers
// was received (ReceivedAt, the session's clock) before the chat's previous
// task took its updates: it was waiting in the pipeline, a burst is being
// handed off. A chat answered one message at a time is neither (each
// message is sent after the previous reply), so it never waits.
const linger = 200 * time.Millisecond

// awaitLean blocks until an update arrives (true) or the chat has been quiet
// for IdleTimeout since it last took updates (false). Its timer is armed
// once per quiet time, not per update: when it fires early (updates came
// meanwhile) it is armed again for the rest.
func (c *chat) awaitLean(ctx workflow.Context, ch workflow.ReceiveChannel) (bool, error) {
	for {
		if c.idle == nil {
			d := c.s.IdleTimeout - workflow.Now(ctx).Sub(c.lastActive)
			if d <= 0 {
				d = c.s.IdleTimeout // a retried idle end (the watermark was not saved): another quiet time
			}
			c.idle = workflow.NewTimer(ctx, d)
		}
		got, fired := false, false
		var timerErr error
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(ch, func(rc workflow.ReceiveChannel, _ bool) {
			// ReceiveAsync: a signal that does not decode is dropped (see awaitUpdate).
			var u UpdateSignal
			if rc.ReceiveAsync(&u) {
				c.push(u)
				got = true
			}
		})
		sel.AddFuture(c.idle, func(f workflow.Future) {
			fired = true
			timerErr = f.Get(ctx, nil)
		})
		sel.Select(ctx)
		if got {
			return true, nil
		}
		if !fired {
			continue
		}
		c.idle = nil
		if timerErr != nil {
			return false, fmt.Errorf("idle timer: %w", timerErr)
		}
		if workflow.Now(ctx).Sub(c.lastActive) >= c.s.IdleTimeout {
			c.drain(ctx, ch)
			return len(c.st.Pending) > 0, nil
		}
	}
}

// respondPending takes the pending updates (at most maxLocalBatch, and no
// more than the run's update bound allows) and answers them, in order.
func (c *chat) respondPending(ctx workflow.Context) {
	limit := max(1, min(maxLocalBatch, c.s.MaxUpdatesPerRun-c.thisRun))
	var batch []UpdateSignal
	last := c.st.LastUpdateID
	for len(c.st.Pending) > 0 && len(batch) < limit {
		u := c.pop()
		c.thisRun++
		if !c.accept(ctx, u.Update, last) {
			continue
		}
		last = u.UpdateID
		batch = append(batch, u)
	}
	busy := len(batch) > 1 || len(batch) == 1 && !batch[0].ReceivedAt.IsZero() && batch[0].ReceivedAt.Before(c.taken)
	c.taken = workflow.Now(ctx)
	c.lastActive = c.taken
	for len(batch) > 0 {
		if !c.st.RemoteAgent {
			res, err := c.respondLocal(ctx, batch, busy)
			switch {
			case err == nil && res.Remote:
				c.st.RemoteAgent = true
				continue
			case err == nil && len(res.Turns) > 0:
				n := min(len(res.Turns), len(batch))
				for i := range n {
					c.finish(ctx, batch[i], res.Turns[i])
				}
				batch = batch[n:]
				continue
			}
			// The local attempt failed or did nothing: this update goes the durable way.
		}
		c.respondRemote(ctx, batch[0])
		batch = batch[1:]
	}
	c.lastActive = workflow.Now(ctx)
}

func (c *chat) respondInput(batch []UpdateSignal, local bool) RespondInput {
	in := RespondInput{BotID: c.in.BotID, ChatID: c.in.ChatID, Memory: c.st.Memory,
		MemoryTurns: c.s.MemoryTurns, MemoryChars: c.s.MemoryChars, Local: local}
	for _, u := range batch {
		in.Updates = append(in.Updates, RespondUpdate{Update: u.Update, ReceivedAt: u.ReceivedAt})
	}
	return in
}

// respondLocal runs Respond as a local activity on batch: one attempt (a
// failure falls back to the regular activity, which retries durably).
func (c *chat) respondLocal(ctx workflow.Context, batch []UpdateSignal, busy bool) (RespondResult, error) {
	lctx := workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{
		StartToCloseTimeout: localTimeout,
		RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 1},
	})
	in := c.respondInput(batch, true)
	if busy {
		in.Linger = linger
	}
	var res RespondResult
	c.localRan = true
	err := workflow.ExecuteLocalActivity(lctx, ActivityRespond, in).Get(ctx, &res)
	if err != nil {
		workflow.GetLogger(ctx).Debug("local respond failed; regular activity instead", "error_type", errorType(err))
	}
	return res, err
}

// respondRemote answers one update with the regular Respond activity.
func (c *chat) respondRemote(ctx workflow.Context, sig UpdateSignal) {
	actx := workflow.WithActivityOptions(ctx, c.respondOptions())
	var res RespondResult
	err := workflow.ExecuteActivity(actx, ActivityRespond, c.respondInput([]UpdateSignal{sig}, false)).Get(ctx, &res)
	if err != nil {
		c.agentFailed(ctx, sig.Update, errorSummary(err), errorType(err))
		c.done(ctx, sig.Update)
		return
	}
	c.st.RemoteAgent = !res.Local
	var t Turn
	if len(res.Turns) > 0 {
		t = res.Turns[0]
	}
	c.finish(ctx, sig, t)
}

func (c *chat) respondOptions() workflow.ActivityOptions {
	o := c.agentOptions()
	o.StartToCloseTimeout = c.s.AgentTimeout + c.s.SendTimeout
	return o
}

// finish completes one update from what Respond did: an agent failure is
// recorded and told; actions not done yet are sent as regular activities,
// in order; then memory and the dedupe state.
func (c *chat) finish(ctx workflow.Context, sig UpdateSignal, t Turn) {
	u := sig.Update
	defer c.done(ctx, u)
	if t.AgentError != "" {
		c.agentFailed(ctx, u, t.AgentError, t.AgentError)
		return
	}
	done := min(max(t.Done, 0), len(t.Actions))
	sent := sentTexts(t.Actions[:done])
	replied := false
	for _, a := range t.Actions[:done] {
		replied = replied || isReply(a.Type)
	}
	if t.ActionError != "" && done < len(t.Actions) {
		name, _ := activityFor(t.Actions[done].Type)
		c.actionFailed(ctx, u, name, t.ActionError)
	} else {
		for _, a := range t.Actions[done:] {
			var recv time.Time
			if !replied && isReply(a.Type) {
				recv = sig.ReceivedAt
			}
			if !c.perform(ctx, u, a, recv) {
				break
			}
			replied = replied || isReply(a.Type)
			if a.Type == agents.ActionSend {
				sent = append(sent, a.Text)
			}
		}
	}
	c.remember(agents.MessageText(u), sent)
}

// agentFailed records an agent that failed for good and tells the chat.
func (c *chat) agentFailed(ctx workflow.Context, u buko.Update, summary, typ string) {
	c.st.Failures++
	c.st.LastError = fmt.Sprintf("update %s: agent: %s", u.UpdateID, summary)
	workflow.GetMetricsHandler(ctx).Counter(metricAgentFailures).Inc(1)
	workflow.GetLogger(ctx).Warn("agent failed; update recorded as failed", "update_id", string(u.UpdateID), "error_type", typ)
	if u.Message != nil {
		// Not a reply to measure: the agent failure already counts against the reply SLO.
		c.perform(ctx, u, agents.Action{Type: agents.ActionSend, Text: FailureNotice, ReplyToMessageID: u.Message.MessageID}, time.Time{})
	}
}

// actionFailed records an action that failed for good in a local Respond.
func (c *chat) actionFailed(ctx workflow.Context, u buko.Update, name, typ string) {
	c.st.Failures++
	c.st.LastError = fmt.Sprintf("update %s: %s: %s", u.UpdateID, name, typ)
	workflow.GetMetricsHandler(ctx).Counter(metricActionFailed).Inc(1)
	workflow.GetLogger(ctx).Warn("action failed", "update_id", string(u.UpdateID), "activity", name, "error_type", typ)
}
