package codec

import (
	"context"
	"fmt"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"buko.app/agentrunner/internal/testsupport"
)

func temporalAddress(t *testing.T) string {
	t.Helper()
	return testsupport.Getenv(t, "Temporal", "TEMPORAL_ADDRESS", testsupport.ServicesHint)
}

// awaitSignal returns the first signal "say" it receives.
func awaitSignal(ctx workflow.Context) (string, error) {
	var s string
	workflow.GetSignalChannel(ctx, "say").Receive(ctx, &s)
	return s, nil
}

// sayAfter sends a sealed signal and returns what the workflow received
// first: the SDK drops a signal that does not decode (logged as a corrupted
// signal) and goes on waiting, so the sealed one must be what it got.
func sayAfter(t *testing.T, c client.Client, wfID, text string) string {
	t.Helper()
	ctx := context.Background()
	if err := c.SignalWorkflow(ctx, wfID, "", "say", text); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := c.GetWorkflow(ctx, wfID, "").Get(ctx, &got); err != nil {
		t.Fatal(err)
	}
	return got
}

// Against a real Temporal: a worker with DataConverter never hands a workflow
// a signal sent without the key, nor one copied from another workflow (the
// SDK drops a signal that does not decode; the next sealed one gets through).
func TestWorkerRefusesInjectedAndCopiedSignals(t *testing.T) {
	addr := temporalAddress(t)
	kr := keyring(t, "k1")
	dc := DataConverter(kr)
	ctx := context.Background()
	keyed, err := client.Dial(client.Options{HostPort: addr, DataConverter: dc, FailureConverter: FailureConverter(dc)})
	if err != nil {
		t.Fatal(err)
	}
	defer keyed.Close()
	keyless, err := client.Dial(client.Options{HostPort: addr}) // the default converter: payloads in the clear
	if err != nil {
		t.Fatal(err)
	}
	defer keyless.Close()
	tq := fmt.Sprintf("codec-test-%d", time.Now().UnixNano())
	w := worker.New(keyed, tq, worker.Options{})
	w.RegisterWorkflowWithOptions(awaitSignal, workflow.RegisterOptions{Name: "codec-await-signal"})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	start := func(id string) {
		t.Helper()
		if _, err := keyed.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: tq, WorkflowExecutionTimeout: time.Minute}, "codec-await-signal"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = keyed.TerminateWorkflow(context.Background(), id, "", "test over") })
	}

	// The control: a sealed signal gets through, bound to its workflow.
	a := tq + "/a"
	start(a)
	if got := sayAfter(t, keyed, a, "hello from A"); got != "hello from A" {
		t.Fatalf("sealed signal: %q", got)
	}
	var sealed *converter.RawValue // A's signal as stored, ciphertext and all
	it := keyed.GetWorkflowHistory(ctx, a, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		if s := ev.GetWorkflowExecutionSignaledEventAttributes(); s != nil {
			p := s.GetInput().GetPayloads()[0]
			if string(p.Metadata[MetadataWorkflowID]) != a {
				t.Fatalf("signal payload in history not bound to %s: %v", a, p.Metadata)
			}
			rv := converter.NewRawValue(p)
			sealed = &rv
		}
	}
	if sealed == nil {
		t.Fatal("no signal in A's history")
	}

	// Injected in the clear: refused, the workflow does not act on it.
	b := tq + "/b"
	start(b)
	if err := keyless.SignalWorkflow(ctx, b, "", "say", "injected"); err != nil {
		t.Fatal(err)
	}
	if got := sayAfter(t, keyed, b, "sealed after"); got != "sealed after" {
		t.Fatalf("workflow B acted on a signal sent in the clear: got %q", got)
	}

	// Copied from A: refused in C.
	cID := tq + "/c"
	start(cID)
	if err := keyless.SignalWorkflow(ctx, cID, "", "say", *sealed); err != nil {
		t.Fatal(err)
	}
	if got := sayAfter(t, keyed, cID, "sealed for C"); got != "sealed for C" {
		t.Fatalf("workflow C acted on a signal copied from A: got %q", got)
	}
}
