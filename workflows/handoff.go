package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/permanent"
)

// maxWorkflowIDLen is Temporal's default limit on workflow ids.
const maxWorkflowIDLen = 1000

// WorkflowID is the chat workflow's id: chat/<bot_id>/<chat_id>.
func WorkflowID(botID, chatID string) string { return "chat/" + botID + "/" + chatID }

// permanentf is a handoff error that retrying cannot fix (a malformed
// update, a payload Temporal refuses for itself — not for its run's limits,
// see RunLimitError), marked with the project's one marker (package
// permanent), so sessions records it and moves on.
func permanentf(format string, args ...any) error {
	return permanent.Mark(fmt.Errorf(format, args...))
}

// Per-run limits of Temporal that refuse a signal (as InvalidArgument) but
// clear with a new run of the workflow: the phrase of the server's message
// (go.temporal.io/server service/history/consts, common/util.go, checked
// against server 1.29) and the limit's name in RunLimitError.Limit.
var runLimitRefusals = []struct{ phrase, limit string }{
	// history.maximumSignalsPerExecution (10,000): the run goes on, the signal is refused.
	{"limit for signal events", "signals_per_run"},
	// limit.historySize.error (50 MiB), limit.historyCount.error (51,200),
	// limit.mutableStateSize.error (8 MiB): the server terminates the run
	// and refuses the signal; a retry starts a new run.
	{"history size exceeds limit", "history_size"},
	{"history count exceeds limit", "history_count"},
	{"mutable state size exceeds limit", "mutable_state_size"},
	{"transaction size exceeds limit", "transaction_size"},
}

// RunLimitError is a handoff refused because the chat's current workflow run
// is at one of Temporal's per-run limits (signals, history size or count,
// mutable state size). A later run accepts the update: it is transient, not
// permanent; sessions retry it with back-off and never ack it meanwhile.
type RunLimitError struct {
	Limit string // signals_per_run, history_size, history_count, mutable_state_size, transaction_size
	Err   error
}

func (e *RunLimitError) Error() string {
	return "workflows: the chat's workflow run is at Temporal's " + e.Limit + " limit: " + e.Err.Error()
}
func (e *RunLimitError) Unwrap() error   { return e.Err }
func (e *RunLimitError) Permanent() bool { return false }

// BackloggedError is a handoff held back because the chat's current run has
// taken its share of signals (Settings.MaxSignalsPerRun,
// MaxSignalBytesPerRun) and is still working: a new signal would grow a run
// that cannot continue-as-new with its backlog. Transient: the session's lane
// retries with back-off (and stops reading past its pending bound) until the
// run continued-as-new, ended, or went idle.
type BackloggedError struct {
	WorkflowID string
	Signals    int // signals this Handoff gave the run
	Bytes      int // their SignalSize sum
}

func (e *BackloggedError) Error() string {
	return fmt.Sprintf("workflows: chat backlogged: %s has %d signals (%d bytes) of this runner and is still working them off", e.WorkflowID, e.Signals, e.Bytes)
}
func (e *BackloggedError) Permanent() bool { return false }

// runShare is what a Handoff gave one chat's current run.
type runShare struct {
	runID   string
	signals int
	bytes   int
	used    time.Time
}

// maxTrackedRuns bounds Handoff.runs; older entries are dropped first.
const maxTrackedRuns = 8192

// Handoff hands updates durably to the chat workflows. It implements
// sessions.Handoff. Safe for concurrent use.
type Handoff struct {
	c         client.Client
	taskQueue string
	settings  Settings
	metrics   *Metrics

	mu   sync.Mutex
	runs map[string]*runShare // by workflow id
}

// NewHandoff returns a Handoff that signal-starts chat workflows on taskQueue.
func NewHandoff(c client.Client, taskQueue string) *Handoff {
	if taskQueue == "" {
		taskQueue = DefaultTaskQueue
	}
	return &Handoff{c: c, taskQueue: taskQueue, runs: map[string]*runShare{}}
}

// WithSettings sets the Settings new chat workflows start with (zero fields: defaults).
func (h *Handoff) WithSettings(s Settings) *Handoff { h.settings = s; return h }

// WithMetrics records handoff counts and latency in m.
func (h *Handoff) WithMetrics(m *Metrics) *Handoff {
	h.metrics = m
	m.allowTaskQueue(h.taskQueue)
	return h
}

// Handoff signals update u to its chat's workflow, starting the workflow if it
// is not running. It returns nil only once Temporal has recorded the signal.
// An error is either marked permanent (permanent.Is: retrying cannot help) or transient.
func (h *Handoff) Handoff(ctx context.Context, botID string, u buko.Update) error {
	start := time.Now()
	err := h.handoff(ctx, botID, u)
	h.metrics.handoff(err, time.Since(start))
	return err
}

func (h *Handoff) handoff(ctx context.Context, botID string, u buko.Update) error {
	if botID == "" || strings.ContainsAny(botID, "/") {
		return permanentf("workflows: handoff: invalid bot id")
	}
	if !u.UpdateID.Valid() {
		return permanentf("workflows: handoff: update has no valid update_id")
	}
	chatID := u.ChatID()
	if chatID == "" {
		return permanentf("workflows: handoff: update %s has no chat (unknown kind)", u.UpdateID)
	}
	id := WorkflowID(botID, chatID)
	if len(id) > maxWorkflowIDLen {
		return permanentf("workflows: handoff: update %s: chat id too long", u.UpdateID)
	}
	opts := client.StartWorkflowOptions{
		ID:                    id,
		TaskQueue:             h.taskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE, // a chat that went quiet starts afresh
		Priority:              temporal.Priority{FairnessKey: botID},
	}
	in := ChatInput{BotID: botID, ChatID: chatID, Settings: h.settings}
	recv, ok := buko.ReceivedAt(ctx)
	if !ok {
		recv = time.Now() // a caller without a receipt time: measure from the handoff
	}
	sig := UpdateSignal{Update: u, Version: UpdateSignalVersion, ReceivedAt: recv.UTC()}
	if err := h.admit(ctx, id); err != nil {
		return fmt.Errorf("workflows: handoff of update %s: %w", u.UpdateID, err)
	}
	run, err := h.c.SignalWithStartWorkflow(ctx, id, SignalUpdate, sig, opts, ChatWorkflowName, in)
	if err != nil {
		return classifyHandoffError(ctx, u.UpdateID, err)
	}
	h.record(id, run.GetRunID(), SignalSize(sig))
	return nil
}

// admit holds a handoff back while the chat's run has had its share of
// signals from this Handoff and is still busy. Below the share it costs
// nothing; past it, each attempt asks Temporal (DescribeWorkflow)
// whether the run has since continued-as-new or ended (a new share starts),
// or is idle (no backlog: the signal is safe, and the run continues-as-new
// right after it).
func (h *Handoff) admit(ctx context.Context, id string) error {
	s := h.settings.withDefaults()
	h.mu.Lock()
	r := h.runs[id]
	var share runShare
	if r != nil {
		share = *r
	}
	h.mu.Unlock()
	if r == nil || (share.signals < s.MaxSignalsPerRun && share.bytes < s.MaxSignalBytesPerRun) {
		return nil
	}
	desc, err := h.c.DescribeWorkflow(ctx, id, "")
	var notFound *serviceerror.NotFound
	switch {
	case errors.As(err, &notFound):
		h.forget(id, share.runID)
		return nil
	case err != nil:
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("describe chat workflow: %w", err)
	}
	d := desc.RawResponse
	info := d.GetWorkflowExecutionInfo()
	if info.GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING || info.GetExecution().GetRunId() != share.runID {
		h.forget(id, share.runID)
		return nil
	}
	if len(d.GetPendingActivities()) == 0 && d.GetPendingWorkflowTask() == nil {
		return nil // idle: nothing pending behind this signal
	}
	return &BackloggedError{WorkflowID: id, Signals: share.signals, Bytes: share.bytes}
}

// record counts a signal Temporal accepted into run runID of workflow id.
func (h *Handoff) record(id, runID string, size int) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.runs[id]
	if r == nil || r.runID != runID {
		if r == nil && len(h.runs) >= maxTrackedRuns {
			h.pruneLocked(now)
		}
		r = &runShare{runID: runID}
		h.runs[id] = r
	}
	r.signals++
	r.bytes += size
	r.used = now
}

// forget drops the share of run runID (a newer run's share stays).
func (h *Handoff) forget(id, runID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.runs[id]; r != nil && r.runID == runID {
		delete(h.runs, id)
	}
}

// pruneLocked drops shares unused for a minute, or all when none is that old:
// a dropped share only means a run may get one more share of signals.
func (h *Handoff) pruneLocked(now time.Time) {
	for id, r := range h.runs {
		if now.Sub(r.used) > time.Minute {
			delete(h.runs, id)
		}
	}
	if len(h.runs) >= maxTrackedRuns {
		clear(h.runs)
	}
}

// classifyHandoffError keeps transient errors transient and marks those that
// no retry can fix.
func classifyHandoffError(ctx context.Context, id buko.UpdateID, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("workflows: handoff of update %s: %w", id, ctx.Err())
	}
	var (
		invalid *serviceerror.InvalidArgument
		tooBig  *serviceerror.ResourceExhausted
	)
	switch {
	case errors.As(err, &invalid):
		msg := strings.ToLower(invalid.Error())
		for _, l := range runLimitRefusals {
			if strings.Contains(msg, l.phrase) {
				return fmt.Errorf("workflows: handoff of update %s: %w", id, &RunLimitError{Limit: l.limit, Err: err})
			}
		}
		// e.g. a payload over the blob size limit, an id Temporal refuses.
		return permanent.Mark(fmt.Errorf("workflows: handoff of update %s refused by Temporal: %w", id, err))
	case errors.As(err, &tooBig):
		return fmt.Errorf("workflows: handoff of update %s: Temporal is busy: %w", id, err)
	}
	return fmt.Errorf("workflows: handoff of update %s: %w", id, err)
}
