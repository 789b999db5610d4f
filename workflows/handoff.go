package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"buko.app/agentrunner/buko"
)

// maxWorkflowIDLen is Temporal's default limit on workflow ids.
const maxWorkflowIDLen = 1000

// WorkflowID is the chat workflow's id: chat/<bot_id>/<chat_id>.
func WorkflowID(botID, chatID string) string { return "chat/" + botID + "/" + chatID }

// PermanentError is a handoff error that retrying cannot fix (a malformed
// update, a payload Temporal refuses). It has the method Permanent() bool that
// sessions.IsPermanent looks for, so sessions records it and moves on.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string   { return e.Err.Error() }
func (e *PermanentError) Unwrap() error   { return e.Err }
func (e *PermanentError) Permanent() bool { return true }

// IsPermanent reports whether err is (or wraps) an error with Permanent() true.
func IsPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

func permanent(format string, args ...any) error {
	return &PermanentError{Err: fmt.Errorf(format, args...)}
}

// Handoff hands updates durably to the chat workflows. It implements
// sessions.Handoff. Safe for concurrent use.
type Handoff struct {
	c         client.Client
	taskQueue string
	settings  Settings
	metrics   *Metrics
}

// NewHandoff returns a Handoff that signal-starts chat workflows on taskQueue.
func NewHandoff(c client.Client, taskQueue string) *Handoff {
	if taskQueue == "" {
		taskQueue = DefaultTaskQueue
	}
	return &Handoff{c: c, taskQueue: taskQueue}
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
// An error is either a *PermanentError (retrying cannot help) or transient.
func (h *Handoff) Handoff(ctx context.Context, botID string, u buko.Update) error {
	start := time.Now()
	err := h.handoff(ctx, botID, u)
	h.metrics.handoff(err, time.Since(start))
	return err
}

func (h *Handoff) handoff(ctx context.Context, botID string, u buko.Update) error {
	if botID == "" || strings.ContainsAny(botID, "/") {
		return permanent("workflows: handoff: invalid bot id")
	}
	if !u.UpdateID.Valid() {
		return permanent("workflows: handoff: update has no valid update_id")
	}
	chatID := u.ChatID()
	if chatID == "" {
		return permanent("workflows: handoff: update %s has no chat (unknown kind)", u.UpdateID)
	}
	id := WorkflowID(botID, chatID)
	if len(id) > maxWorkflowIDLen {
		return permanent("workflows: handoff: update %s: chat id too long", u.UpdateID)
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
	_, err := h.c.SignalWithStartWorkflow(ctx, id, SignalUpdate, sig, opts, ChatWorkflowName, in)
	if err == nil {
		return nil
	}
	return classifyHandoffError(ctx, u.UpdateID, err)
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
		// e.g. a payload over the blob size limit, an id Temporal refuses.
		return &PermanentError{Err: fmt.Errorf("workflows: handoff of update %s refused by Temporal: %w", id, err)}
	case errors.As(err, &tooBig):
		return fmt.Errorf("workflows: handoff of update %s: Temporal is busy: %w", id, err)
	}
	return fmt.Errorf("workflows: handoff of update %s: %w", id, err)
}
