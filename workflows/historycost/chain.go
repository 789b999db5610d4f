package historycost

import (
	"context"
	"fmt"
	"slices"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/client"
)

// maxChainRuns bounds how far Chain walks back.
const maxChainRuns = 1000

// Chain fetches the histories of every run of workflowID's latest chain,
// oldest first: the latest run, then each run it continued from (the started
// event's continued_execution_run_id), through GetWorkflowHistory.
func Chain(ctx context.Context, c client.Client, workflowID string) ([][]*historypb.HistoryEvent, error) {
	var runs [][]*historypb.HistoryEvent
	runID := ""
	for len(runs) < maxChainRuns {
		evs, err := History(ctx, c, workflowID, runID)
		if err != nil {
			return nil, err
		}
		runs = append(runs, evs)
		if len(evs) == 0 {
			break
		}
		prev := evs[0].GetWorkflowExecutionStartedEventAttributes().GetContinuedExecutionRunId()
		if prev == "" {
			break
		}
		runID = prev
	}
	slices.Reverse(runs)
	return runs, nil
}

// History fetches one run's events (runID "" = the latest run).
func History(ctx context.Context, c client.Client, workflowID, runID string) ([]*historypb.HistoryEvent, error) {
	it := c.GetWorkflowHistory(ctx, workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	var evs []*historypb.HistoryEvent
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("historycost: history of %s run %q: %w", workflowID, runID, err)
		}
		evs = append(evs, e)
	}
	return evs, nil
}
