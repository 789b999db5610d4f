package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows/agents"
)

func TestUpdateSignalIsCompatibleBothWays(t *testing.T) {
	u := textUpdate("17", "c1", "hi")
	old, err := json.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	var sig UpdateSignal
	if err := json.Unmarshal(old, &sig); err != nil {
		t.Fatalf("a version 0 payload does not decode: %v", err)
	}
	if sig.UpdateID != "17" || sig.ChatID() != "c1" || sig.Version != 0 || !sig.ReceivedAt.IsZero() {
		t.Errorf("version 0 payload decoded as %+v", sig)
	}
	at := time.Date(2025, 3, 1, 12, 0, 0, 5, time.UTC)
	data, err := json.Marshal(UpdateSignal{Update: u, Version: UpdateSignalVersion, ReceivedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	var bare buko.Update
	if err := json.Unmarshal(data, &bare); err != nil || bare.UpdateID != "17" || bare.Message == nil || bare.Message.Text != "hi" {
		t.Errorf("an older worker cannot read a version 1 payload %s: %+v %v", data, bare, err)
	}
	var back UpdateSignal
	if err := json.Unmarshal(data, &back); err != nil || !back.ReceivedAt.Equal(at) || back.Version != 1 {
		t.Errorf("round trip of %s: %+v %v", data, back, err)
	}
}

// The first reply of an update carries its receipt time; typing, later
// replies and the failure notice do not.
func TestChatWorkflowPassesReceiptTimeToFirstReply(t *testing.T) {
	var got []ActionInput
	f := &fakeActs{}
	env := newTestEnv(t, f)
	agent := func(_ context.Context, in AgentInput) (AgentOutput, error) {
		if agents.MessageText(in.Update) == "fail" {
			return AgentOutput{}, temporal.NewNonRetryableApplicationError("nope", ErrTypeAgentReply, nil)
		}
		return AgentOutput{Actions: []agents.Action{
			{Type: agents.ActionTyping}, {Type: agents.ActionSend, Text: "a"}, {Type: agents.ActionSend, Text: "b"},
		}}, nil
	}
	env.RegisterActivityWithOptions(agent, activity.RegisterOptions{Name: ActivityAgent})
	rec := func(_ context.Context, in ActionInput) (ActionResult, error) {
		got = append(got, in)
		return ActionResult{}, nil
	}
	f.agentHook, f.sendHook = agent, rec // the same, inside Respond
	env.RegisterActivityWithOptions(rec, activity.RegisterOptions{Name: ActivitySendMessage})
	env.RegisterActivityWithOptions(rec, activity.RegisterOptions{Name: ActivitySendChatAction})
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	env.RegisterDelayedCallback(func() {
		env.SignalWorkflow(SignalUpdate, UpdateSignal{Update: textUpdate("5", "c1", "x"), Version: UpdateSignalVersion, ReceivedAt: at})
	}, time.Second)
	signalAt(env, 2*time.Second, textUpdate("6", "c1", "y")) // a version 0 payload
	env.RegisterDelayedCallback(func() {
		env.SignalWorkflow(SignalUpdate, UpdateSignal{Update: textUpdate("7", "c1", "fail"), Version: UpdateSignalVersion, ReceivedAt: at})
	}, 3*time.Second)
	env.ExecuteWorkflow(ChatWorkflowName, testInput())
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var stamped []string
	for _, in := range got {
		if !in.ReceivedAt.IsZero() {
			if !in.ReceivedAt.Equal(at) {
				t.Errorf("%s carries %v, want %v", in.Action.Text, in.ReceivedAt, at)
			}
			stamped = append(stamped, in.Action.Type+":"+in.Action.Text)
		}
	}
	if strings.Join(stamped, ",") != "send:a" || len(got) != 7 {
		t.Errorf("stamped actions %v of %d, want only the first send of update 5 of 7 actions", stamped, len(got))
	}
}

func TestBotAPICallCodes(t *testing.T) {
	for _, c := range []struct {
		err          error
		result, code string
	}{
		{nil, "ok", "ok"},
		{&buko.Error{Method: "sendMessage", Status: 403, Code: buko.CodeBotBlocked}, "rejected", buko.CodeBotBlocked},
		{&buko.Error{Method: "sendMessage", Status: 403, Code: buko.CodeChatForbidden}, "rejected", buko.CodeChatForbidden},
		{&buko.Error{Method: "sendMessage", Status: 429, Code: buko.CodeRateLimited}, "rate_limited", buko.CodeRateLimited},
		{&buko.Error{Method: "sendMessage", Status: 500, Code: buko.CodeInternal}, "retry", buko.CodeInternal},
		{&buko.Error{Method: "sendMessage", Status: 400, Code: "SOME NEW free text"}, "rejected", "other"},
		{&buko.Error{Method: "sendMessage", Status: 502}, "retry", "other"},
		{&buko.Error{Method: "sendPhoto"}, "rejected", "other"},
		{&buko.RequestError{Method: "sendMessage", Err: errors.New("reset")}, "retry", "network"},
	} {
		if r, code := resultOf(c.err), codeOf(c.err); r != c.result || code != c.code {
			t.Errorf("%v: result %s code %s, want %s %s", c.err, r, code, c.result, c.code)
		}
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.apiCall("sendMessage", &buko.Error{Status: http.StatusForbidden, Code: buko.CodeBotBlocked}, time.Millisecond)
	if v := testutil.ToFloat64(m.apiCalls.WithLabelValues("sendMessage", "rejected", buko.CodeBotBlocked)); v != 1 {
		t.Errorf("blocked call counted %v times", v)
	}
	m.replied(3 * time.Second)
	m.replied(-time.Second) // clock skew between replicas: counted as instant
	if n := testutil.CollectAndCount(m.replyLatency); n != 1 {
		t.Errorf("reply latency series: %d", n)
	}
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func TestTemporalHandlerForwardsSDKMetricsWithBoundedLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.allowTaskQueue("chats")
	h := m.TemporalHandler().WithTags(map[string]string{"namespace": "prod", "client_name": "temporal_go"})
	h.WithTags(map[string]string{"task_queue": "chats", "workflow_type": ChatWorkflowName, "activity_type": ActivitySendMessage}).
		Timer("temporal_activity_schedule_to_start_latency").Record(1500 * time.Millisecond)
	h.WithTags(map[string]string{"task_queue": "host-1:4f1c0e-sticky", "workflow_type": "SomeoneElsesWorkflow", "user_id": "u42"}).
		Counter("temporal_workflow_task_queue_poll_succeed").Inc(2)
	h.WithTags(map[string]string{"operation": "PollActivityTaskQueue", "status_code": "Unavailable"}).
		Counter("temporal_long_request_failure").Inc(1)
	h.WithTags(map[string]string{"worker_type": "ActivityWorker"}).Gauge("temporal_worker_task_slots_available").Update(7)
	h.Counter("not_a_temporal_metric").Inc(1)
	h.Timer("temporal_BAD name").Record(time.Second)
	// The workflow's own counters still go to their agentrunner_workflows_* families.
	h.Counter(metricProcessed).Inc(3)

	fams := gather(t, reg)
	labelsOf := func(name string) []map[string]string {
		var out []map[string]string
		for _, mm := range fams[name].GetMetric() {
			ls := map[string]string{}
			for _, lp := range mm.GetLabel() {
				if lp.GetValue() != "" {
					ls[lp.GetName()] = lp.GetValue()
				}
			}
			out = append(out, ls)
		}
		return out
	}
	st := labelsOf("agentrunner_temporal_activity_schedule_to_start_latency_seconds")
	if len(st) != 1 || st[0]["task_queue"] != "chats" || st[0]["activity_type"] != ActivitySendMessage || st[0]["namespace"] != "prod" {
		t.Errorf("schedule-to-start labels %v", st)
	}
	if h := fams["agentrunner_temporal_activity_schedule_to_start_latency_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleSum() != 1.5 {
		t.Errorf("recorded %v s, want 1.5", h.GetSampleSum())
	}
	poll := labelsOf("agentrunner_temporal_workflow_task_queue_poll_succeed_total")
	if len(poll) != 1 || poll[0]["task_queue"] != "other" || poll[0]["workflow_type"] != "other" {
		t.Errorf("unbounded values not folded: %v", poll)
	}
	for name, f := range fams {
		for _, mm := range f.GetMetric() {
			for _, lp := range mm.GetLabel() {
				if lp.GetName() == "user_id" || lp.GetName() == "client_name" {
					t.Errorf("%s kept tag %s", name, lp.GetName())
				}
			}
		}
		if strings.Contains(name, "not_a_temporal") || strings.Contains(name, "BAD") {
			t.Errorf("forwarded %s", name)
		}
	}
	if v := testutil.ToFloat64(m.sdk.counter(sdkLongRequestFailure, map[string]string{"operation": "PollActivityTaskQueue", "status_code": "Unavailable", "namespace": "prod"})); v != 1 {
		t.Errorf("poll failures %v", v)
	}
	if v := testutil.ToFloat64(m.sdk.gauge(sdkSlotsAvailable, map[string]string{"worker_type": "ActivityWorker", "namespace": "prod"})); v != 7 {
		t.Errorf("slots gauge %v", v)
	}
	if v := testutil.ToFloat64(m.workflowCounter[metricProcessed]); v != 3 {
		t.Errorf("workflow counter %v", v)
	}
	var nilM *Metrics
	nilM.TemporalHandler().Counter("temporal_request").Inc(1) // nil-safe
}
