package workflows

import (
	"context"
	"errors"
	"fmt"
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	workflowpb "go.temporal.io/api/workflow/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"buko.app/agentrunner/permanent"
)

// refusingClient is a client.Client whose SignalWithStartWorkflow returns
// err: a unit test of classification alone (the real server's answers are
// covered by the integration tests). Any other method panics.
type refusingClient struct {
	client.Client
	err   error
	calls int
}

func (c *refusingClient) SignalWithStartWorkflow(context.Context, string, string, interface{}, client.StartWorkflowOptions, interface{}, ...interface{}) (client.WorkflowRun, error) {
	c.calls++
	return nil, c.err
}

// The messages are the server's own (go.temporal.io/server 1.29:
// service/history/consts, common/util.go, service/frontend).
func TestHandoffClassifiesTemporalRefusals(t *testing.T) {
	for _, c := range []struct {
		name  string
		err   error
		class string // run_limit, permanent, transient
		limit string
	}{
		{"signals per run", serviceerror.NewInvalidArgument("exceeded workflow execution limit for signal events"), "run_limit", "signals_per_run"},
		{"history size", serviceerror.NewInvalidArgument("Workflow history size exceeds limit."), "run_limit", "history_size"},
		{"history count", serviceerror.NewInvalidArgument("Workflow history count exceeds limit."), "run_limit", "history_count"},
		{"mutable state", serviceerror.NewInvalidArgument("Workflow mutable state size exceeds limit."), "run_limit", "mutable_state_size"},
		{"transaction", serviceerror.NewInvalidArgument("Transaction size exceeds limit."), "run_limit", "transaction_size"},
		{"blob size", serviceerror.NewInvalidArgument("Blob data size exceeds limit."), "permanent", ""},
		{"workflow id", serviceerror.NewInvalidArgument("WorkflowId length exceeds limit."), "permanent", ""},
		{"closing", &serviceerror.ResourceExhausted{Cause: enumspb.RESOURCE_EXHAUSTED_CAUSE_BUSY_WORKFLOW, Message: "workflow operation can not be applied because workflow is closing"}, "transient", ""},
		{"busy", &serviceerror.ResourceExhausted{Cause: enumspb.RESOURCE_EXHAUSTED_CAUSE_BUSY_WORKFLOW, Message: "Workflow is busy."}, "transient", ""},
		{"unavailable", serviceerror.NewUnavailable("unable to locate current workflow execution"), "transient", ""},
		{"deadline", context.DeadlineExceeded, "transient", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			fc := &refusingClient{err: c.err}
			err := NewHandoff(fc, "q").Handoff(context.Background(), "bot_1", textUpdate("10", "c1", "hi"))
			if fc.calls != 1 || err == nil {
				t.Fatalf("calls %d, err %v", fc.calls, err)
			}
			var rl *RunLimitError
			isRL := errors.As(err, &rl)
			perm := permanent.Is(err)
			switch c.class {
			case "run_limit":
				if !isRL || perm || rl.Limit != c.limit {
					t.Errorf("%v: run limit %v (%+v), permanent %v; want run limit %s, not permanent", err, isRL, rl, perm, c.limit)
				}
				if !errors.Is(err, c.err) {
					t.Errorf("%v does not wrap the server's error", err)
				}
			case "permanent":
				if isRL || !perm {
					t.Errorf("%v: run limit %v, permanent %v; want permanent", err, isRL, perm)
				}
			case "transient":
				if isRL || perm {
					t.Errorf("%v: run limit %v, permanent %v; want transient", err, isRL, perm)
				}
			}
		})
	}
}

// shareClient accepts signals into run "r1" and describes the workflow as
// described: a unit test of the Handoff's share accounting.
type shareClient struct {
	client.Client
	signals   int
	describes int
	describe  *workflowservice.DescribeWorkflowExecutionResponse
}

type fixedRun struct {
	client.WorkflowRun
	id string
}

func (r fixedRun) GetRunID() string { return r.id }

func (c *shareClient) SignalWithStartWorkflow(context.Context, string, string, interface{}, client.StartWorkflowOptions, interface{}, ...interface{}) (client.WorkflowRun, error) {
	c.signals++
	return fixedRun{id: c.describe.GetWorkflowExecutionInfo().GetExecution().GetRunId()}, nil
}

func (c *shareClient) DescribeWorkflow(context.Context, string, string) (*client.WorkflowExecutionDescription, error) {
	c.describes++
	return &client.WorkflowExecutionDescription{RawResponse: c.describe}, nil
}

func TestHandoffHoldsBackBusyRunPastItsShare(t *testing.T) {
	running := func(runID string, busy bool) *workflowservice.DescribeWorkflowExecutionResponse {
		d := &workflowservice.DescribeWorkflowExecutionResponse{WorkflowExecutionInfo: &workflowpb.WorkflowExecutionInfo{
			Execution: &commonpb.WorkflowExecution{WorkflowId: "chat/bot_1/c1", RunId: runID},
			Status:    enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING,
		}}
		if busy {
			d.PendingActivities = []*workflowpb.PendingActivityInfo{{ActivityId: "1"}}
		}
		return d
	}
	fc := &shareClient{describe: running("r1", true)}
	h := NewHandoff(fc, "q").WithSettings(Settings{MaxSignalsPerRun: 3})
	ctx := context.Background()
	id := 100
	next := func() error { id++; return h.Handoff(ctx, "bot_1", textUpdate(fmt.Sprint(id), "c1", "hi")) }
	for i := 0; i < 3; i++ {
		if err := next(); err != nil {
			t.Fatal(err)
		}
	}
	if fc.describes != 0 {
		t.Errorf("%d describes within the share: the normal path must cost nothing extra", fc.describes)
	}
	// Share used, run busy: held back, transient, and nothing signalled.
	err := next()
	var bl *BackloggedError
	if !errors.As(err, &bl) || permanent.Is(err) || fc.signals != 3 || bl.Signals != 3 {
		t.Fatalf("err %v (%+v), signals %d; want chat backlogged after 3", err, bl, fc.signals)
	}
	// The run went idle: its backlog is worked off, the signal goes in.
	fc.describe = running("r1", false)
	if err := next(); err != nil || fc.signals != 4 {
		t.Fatalf("idle run: %v, signals %d", err, fc.signals)
	}
	// Busy again: held back; then it continued-as-new: a new share.
	fc.describe = running("r1", true)
	if err := next(); !errors.As(err, &bl) {
		t.Fatalf("busy again: %v", err)
	}
	fc.describe = running("r2", true)
	for i := 0; i < 3; i++ {
		if err := next(); err != nil {
			t.Fatalf("new run, signal %d: %v", i, err)
		}
	}
	if err := next(); !errors.As(err, &bl) || fc.signals != 7 {
		t.Fatalf("new run past its share: %v, signals %d", err, fc.signals)
	}
	// The run ended (completed after its quiet time): a new run, a new share.
	fc.describe.WorkflowExecutionInfo.Status = enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED
	if err := next(); err != nil {
		t.Fatalf("ended run: %v", err)
	}
}
