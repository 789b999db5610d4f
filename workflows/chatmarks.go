package workflows

import (
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"buko.app/agentrunner/buko"
)

// The chat's durable watermark, as ChatWorkflow reads and writes it
// (docs/workflows.md, "Dedupe").

func (c *chat) markOptions() workflow.LocalActivityOptions {
	return workflow.LocalActivityOptions{
		StartToCloseTimeout:    c.s.SendTimeout,
		ScheduleToCloseTimeout: c.s.GiveUpAfter,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:    c.s.RetryInitial,
			BackoffCoefficient: 2,
			MaximumInterval:    c.s.RetryMax,
		},
	}
}

// loadMark reads the chat's durable watermark and drops updates at or below
// it from now on. Without it (the store failed for GiveUpAfter) the run goes
// on with its own dedupe only, and says so in LastError.
func (c *chat) loadMark(ctx workflow.Context) {
	// Decoded as a string: "" (no mark yet) is not a valid buko.UpdateID and
	// would fail the decode of a chat's first read.
	var raw string
	lctx := workflow.WithLocalActivityOptions(ctx, c.markOptions())
	err := workflow.ExecuteLocalActivity(lctx, ActivityLoadChatMark, ChatMarkInput{BotID: c.in.BotID, ChatID: c.in.ChatID}).Get(ctx, &raw)
	mark := buko.UpdateID(raw)
	if err != nil {
		c.st.LastError = "chat watermark not read: " + errorSummary(err)
		workflow.GetLogger(ctx).Warn("chat watermark not read; dedupe only within this chain", "error_type", errorType(err))
		return
	}
	if !mark.Valid() {
		return
	}
	c.st.Mark = mark
	if c.st.LastUpdateID == "" || mark.Compare(c.st.LastUpdateID) > 0 {
		c.st.LastUpdateID = mark
	}
}

// saveMark makes LastUpdateID the chat's durable watermark if it grew; false
// means it could not (the run must not end yet).
func (c *chat) saveMark(ctx workflow.Context) bool {
	id := c.st.LastUpdateID
	if id == "" || (c.st.Mark != "" && id.Compare(c.st.Mark) <= 0) {
		return true
	}
	lctx := workflow.WithLocalActivityOptions(ctx, c.markOptions())
	err := workflow.ExecuteLocalActivity(lctx, ActivitySaveChatMark, ChatMarkInput{BotID: c.in.BotID, ChatID: c.in.ChatID, ID: id}).Get(ctx, nil)
	if err != nil {
		c.st.LastError = "chat watermark not saved: " + errorSummary(err)
		workflow.GetLogger(ctx).Warn("chat watermark not saved; staying open", "error_type", errorType(err))
		return false
	}
	c.st.Mark = id
	return true
}
