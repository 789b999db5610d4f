// Package historycost measures what an update costs in Temporal: the history
// events and the billable actions (Temporal Cloud's definition, see
// docs/workflows.md "Event budget") that a chat workflow chain records, counted
// from real histories fetched with GetWorkflowHistory after a real run against
// a real server (Run), never estimated.
package historycost

import (
	"fmt"
	"sort"
	"strings"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
)

// Action kinds counted by Count, after Temporal Cloud's action types.
const (
	ActionStartWorkflow  = "start_workflow"         // a run started (client start or continue-as-new); a signal-with-start that started it is one action with its signal
	ActionSignal         = "signal_workflow"        // every signal (a signal-with-start: one in all)
	ActionScheduleAct    = "schedule_activity"      // every activity scheduled
	ActionRetryActivity  = "retry_activity"         // every attempt of an activity beyond its first
	ActionLocalMarkers   = "record_activity_marker" // every workflow task that recorded markers: one action however many
	ActionRetryLocal     = "retry_activity_local"   // local activity attempts beyond the first (metering metadata)
	ActionWFTHeartbeat   = "workflow_task_heartbeat"
	ActionTimer          = "start_timer"
	ActionUpsertSA       = "upsert_search_attributes" // not for TemporalChangeVersion alone (exempt)
	ActionUpdateAccepted = "accept_workflow_update"
	ActionStartChild     = "start_child_workflow" // two: the intent and the start
)

// Cost is what one or more workflow runs recorded.
type Cost struct {
	Runs    int            `json:"runs"`
	Events  int            `json:"events"`
	ByEvent map[string]int `json:"by_event"`  // event type (WorkflowTaskCompleted, …) → count
	Actions int            `json:"actions"`   // billable actions, Temporal Cloud's definition
	ByKind  map[string]int `json:"by_action"` // action kind → count
}

// Add adds o to c.
func (c *Cost) Add(o Cost) {
	c.Runs += o.Runs
	c.Events += o.Events
	c.Actions += o.Actions
	for k, v := range o.ByEvent {
		c.inc(&c.ByEvent, k, v)
	}
	for k, v := range o.ByKind {
		c.inc(&c.ByKind, k, v)
	}
}

func (c *Cost) inc(m *map[string]int, k string, n int) {
	if n == 0 {
		return
	}
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[k] += n
}

func (c *Cost) action(kind string, n int) {
	c.Actions += n
	c.inc(&c.ByKind, kind, n)
}

// Count counts the events and billable actions of one run's history.
//
// Actions (Temporal Cloud, docs.temporal.io/evaluate/cloud/actions): a run
// started by continue-as-new or a client start is one; a signal-with-start
// that started the run is one action with its signal (the run's first
// signal is not counted again); every other signal one; every activity
// scheduled one, and every attempt beyond the first one more (the started
// event's attempt); all markers of one workflow task one (local activities
// are billed per workflow task; Version markers are counted the same way,
// which errs on the high side), plus local activity retries from the task's
// metering metadata; a workflow task heartbeat (a task completed and at once
// followed by a new one, with nothing in between) one; every timer started
// one; every search attribute upsert one, except TemporalChangeVersion alone;
// an update accepted one; a child workflow two. Workflow tasks, activity
// completions, timer firings and the run's close are events, not actions.
// Queries are actions too but leave no event (this package issues none).
func Count(events []*historypb.HistoryEvent) Cost {
	c := Cost{Runs: 1}
	sws := false // the run was started by signal-with-start: its first signal is part of that action
	markersInTask := false
	for i, e := range events {
		t := e.GetEventType()
		c.Events++
		c.inc(&c.ByEvent, t.String(), 1)
		switch t {
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
			c.action(ActionStartWorkflow, 1)
			a := e.GetWorkflowExecutionStartedEventAttributes()
			// A first run (not continued, not a retry or cron) that holds a signal
			// before its first workflow task was started with that signal.
			sws = a.GetContinuedExecutionRunId() == "" && a.GetInitiator() == enumspb.CONTINUE_AS_NEW_INITIATOR_UNSPECIFIED &&
				i+1 < len(events) && events[i+1].GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
			if sws && i == 1 {
				continue // counted with the start
			}
			c.action(ActionSignal, 1)
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
			c.action(ActionScheduleAct, 1)
		case enumspb.EVENT_TYPE_ACTIVITY_TASK_STARTED:
			if n := e.GetActivityTaskStartedEventAttributes().GetAttempt(); n > 1 {
				c.action(ActionRetryActivity, int(n-1))
			}
		case enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
			markersInTask = false
			if n := e.GetWorkflowTaskCompletedEventAttributes().GetMeteringMetadata().GetNonfirstLocalActivityExecutionAttempts(); n > 0 {
				c.action(ActionRetryLocal, int(n))
			}
			if i+1 < len(events) && events[i+1].GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED {
				c.action(ActionWFTHeartbeat, 1)
			}
		case enumspb.EVENT_TYPE_MARKER_RECORDED:
			if !markersInTask {
				markersInTask = true
				c.action(ActionLocalMarkers, 1)
			}
		case enumspb.EVENT_TYPE_TIMER_STARTED:
			c.action(ActionTimer, 1)
		case enumspb.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
			f := e.GetUpsertWorkflowSearchAttributesEventAttributes().GetSearchAttributes().GetIndexedFields()
			if _, ok := f["TemporalChangeVersion"]; ok && len(f) == 1 {
				continue
			}
			c.action(ActionUpsertSA, 1)
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
			c.action(ActionUpdateAccepted, 1)
		case enumspb.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
			c.action(ActionStartChild, 2)
		}
	}
	return c
}

// CountChain counts every run of a chain.
func CountChain(runs [][]*historypb.HistoryEvent) Cost {
	var c Cost
	for _, r := range runs {
		c.Add(Count(r))
	}
	return c
}

// String is a one-line summary: events and actions, with the five largest kinds of each.
func (c Cost) String() string {
	return fmt.Sprintf("%d runs, %d events (%s), %d actions (%s)", c.Runs, c.Events, top(c.ByEvent, 5), c.Actions, top(c.ByKind, 5))
}

func top(m map[string]int, n int) string {
	type kv struct {
		k string
		v int
	}
	var all []kv
	for k, v := range m {
		all = append(all, kv{k, v})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v > all[j].v || all[i].v == all[j].v && all[i].k < all[j].k })
	var parts []string
	for i, e := range all {
		if i == n {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, fmt.Sprintf("%s %d", e.k, e.v))
	}
	return strings.Join(parts, ", ")
}
