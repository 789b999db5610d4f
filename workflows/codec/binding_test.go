package codec

import (
	"bytes"
	"errors"
	"testing"

	commonpb "go.temporal.io/api/common/v1"
	failurepb "go.temporal.io/api/failure/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/proto"
)

func wfCtx(id string) converter.SerializationContext {
	return converter.WorkflowSerializationContext{Namespace: "default", WorkflowID: id}
}

// The worker's converter decodes nothing it did not seal: a signal or input
// sent without the key (plain JSON, binary, null, proto JSON) is refused.
func TestWorkerConverterRefusesUnencryptedPayloads(t *testing.T) {
	kr := keyring(t, "k1")
	for _, dc := range []converter.DataConverter{DataConverter(kr), converter.WithDataConverterSerializationContext(DataConverter(kr), wfCtx("chat/b/c"))} {
		plainDC := converter.GetDefaultDataConverter()
		for _, v := range []any{map[string]string{"text": "say something bad"}, []byte("raw"), nil, "text"} {
			p, err := plainDC.ToPayload(v)
			if err != nil {
				t.Fatal(err)
			}
			var out any
			err = dc.FromPayload(p, &out)
			if !errors.Is(err, ErrNotEncrypted) {
				t.Fatalf("plain %s payload: err = %v, want ErrNotEncrypted (decoded %v)", p.Metadata[MetadataEncoding], err, out)
			}
		}
		// In a batch too (signal args are Payloads): one plain payload fails them all.
		good, _ := dc.ToPayload("fine")
		bad, _ := plainDC.ToPayload("evil")
		var a, b string
		if err := dc.FromPayloads(&commonpb.Payloads{Payloads: []*commonpb.Payload{good, bad}}, &a, &b); !errors.Is(err, ErrNotEncrypted) {
			t.Fatalf("mixed payloads: %v", err)
		}
	}
	// The operator's codec (codec decode / serve) still passes plain payloads through.
	plain := &commonpb.Payload{Metadata: map[string][]byte{MetadataEncoding: []byte("json/plain")}, Data: []byte(`1`)}
	if out, err := New(kr).Decode([]*commonpb.Payload{plain}); err != nil || out[0] != plain {
		t.Fatalf("operator codec on a plain payload: %v", err)
	}
}

// A payload sealed in workflow A's context opens in A's, not in B's; the
// workflow id is in the associated data, so changing the metadata does not help.
func TestPayloadBoundToItsWorkflow(t *testing.T) {
	kr := keyring(t, "k1")
	dc := DataConverter(kr)
	inA := converter.WithDataConverterSerializationContext(dc, wfCtx("chat/bot_1/spc_A"))
	inB := converter.WithDataConverterSerializationContext(dc, wfCtx("chat/bot_1/spc_B"))
	p, err := inA.ToPayload(map[string]string{"text": "for A only"})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(p.Metadata[MetadataWorkflowID]); got != "chat/bot_1/spc_A" {
		t.Fatalf("workflow id metadata %q", got)
	}
	var v map[string]string
	if err := inA.FromPayload(p, &v); err != nil || v["text"] != "for A only" {
		t.Fatalf("in A: %v %v", err, v)
	}
	if err := inB.FromPayload(p, &v); !errors.Is(err, ErrOtherWorkflow) {
		t.Fatalf("in B: err = %v, want ErrOtherWorkflow", err)
	}
	// Relabelled for B: the seal does not open.
	forged := &commonpb.Payload{Metadata: map[string][]byte{}, Data: bytes.Clone(p.Data)}
	for k, x := range p.Metadata {
		forged.Metadata[k] = x
	}
	forged.Metadata[MetadataWorkflowID] = []byte("chat/bot_1/spc_B")
	if err := inB.FromPayload(forged, &v); err == nil {
		t.Fatal("a payload relabelled for B opened in B")
	}
	// Stripped of its binding (to pass as format 1): does not open either.
	delete(forged.Metadata, MetadataWorkflowID)
	if err := inB.FromPayload(forged, &v); err == nil {
		t.Fatal("a payload stripped of its workflow id opened")
	}
	// An activity of workflow A shares A's binding (activity inputs are sealed by the workflow).
	inAct := converter.WithDataConverterSerializationContext(dc, converter.ActivitySerializationContext{WorkflowID: "chat/bot_1/spc_A", ActivityType: "Reply"})
	if err := inAct.FromPayload(p, &v); err != nil {
		t.Fatalf("activity of A: %v", err)
	}
	// Without a context (operator tools, SDK paths that give none) it opens for the workflow it names.
	if err := dc.FromPayload(p, &v); err != nil {
		t.Fatalf("no context: %v", err)
	}
	if out, err := New(kr).Decode([]*commonpb.Payload{p}); err != nil || len(out) != 1 {
		t.Fatalf("operator codec: %v", err)
	}
}

// Format 1 (before binding; running histories and replay testdata hold it)
// still opens, in any context.
func TestFormat1StillDecodes(t *testing.T) {
	kr := keyring(t, "k1")
	old, err := converter.NewCodecDataConverter(converter.GetDefaultDataConverter(), New(kr)).ToPayload("from before")
	if err != nil {
		t.Fatal(err)
	}
	if _, bound := old.Metadata[MetadataWorkflowID]; bound {
		t.Fatal("context-free encode is bound")
	}
	var s string
	for _, dc := range []converter.DataConverter{DataConverter(kr), converter.WithDataConverterSerializationContext(DataConverter(kr), wfCtx("chat/x/y"))} {
		if err := dc.FromPayload(old, &s); err != nil || s != "from before" {
			t.Fatalf("format 1: %v %q", err, s)
		}
	}
}

// Failures are bound to their workflow too, when the SDK gives a context.
func TestFailuresBoundToTheirWorkflow(t *testing.T) {
	kr := keyring(t, "k1")
	fc := FailureConverter(DataConverter(kr))
	inA := converter.WithFailureConverterSerializationContext(fc, wfCtx("A"))
	inB := converter.WithFailureConverterSerializationContext(fc, wfCtx("B"))
	f := inA.ErrorToFailure(temporal.NewApplicationError("user said: secret words", "Oops"))
	if bytes.Contains([]byte(f.String()), []byte("secret words")) {
		t.Fatal("failure message in the clear")
	}
	if got := string(f.GetEncodedAttributes().GetMetadata()[MetadataWorkflowID]); got != "A" {
		t.Fatalf("failure attributes bound to %q", got)
	}
	// (FailureToError decodes the failure in place: give each its own copy.)
	if err := inA.FailureToError(proto.Clone(f).(*failurepb.Failure)); err == nil || !bytes.Contains([]byte(err.Error()), []byte("secret words")) {
		t.Fatalf("in A: %v", err)
	}
	if err := inB.FailureToError(proto.Clone(f).(*failurepb.Failure)); err != nil && bytes.Contains([]byte(err.Error()), []byte("secret words")) {
		t.Fatalf("in B the failure opened: %v", err)
	}
}
