package workflows

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/rs/zerolog"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows/agents"
)

// WorkerOptions configure a Worker. Bots, Tokens and API are required.
type WorkerOptions struct {
	TaskQueue string       // default DefaultTaskQueue
	Bots      BotDirectory // agent kind, config and tier per bot
	Tokens    Tokens       // bot tokens, resolved per call
	API       *buko.Client // the Bot API
	// Marks keeps each chat's handled update id beyond a workflow's life, so
	// a redelivery after the quiet time is still dropped. Nil: dedupe lasts
	// only as long as the chat's workflow chain (tests, tools).
	Marks ChatMarks

	Agents agents.Registry // nil: agents.Builtin()
	// LocalAgents are the agent kinds run as local activities (in the
	// workflow task, with a fallback to regular activities): fast agents of
	// the worker itself. Nil: echo.
	LocalAgents []string
	Secrets     agents.Secrets // resolves secret references in agent configs; may be nil
	HTTP        *http.Client   // for agents' outbound calls; nil: a client without a global timeout (agents set their own)

	// PerBotConcurrency bounds the activities of one bot running at once in
	// this worker (fairness between bots). Default: a quarter of
	// MaxConcurrentActivities, at least 2. Negative: no bound.
	PerBotConcurrency int
	// MaxConcurrentActivities is the worker's activity slots (default 64).
	MaxConcurrentActivities int
	// MaxConcurrentWorkflowTasks is the worker's workflow task slots (default 32).
	MaxConcurrentWorkflowTasks int
	// MaxQuotaWait is the longest a send waits in the worker for its bot's
	// quota; a longer wait is handed back to Temporal as a delayed retry (default 3s).
	MaxQuotaWait time.Duration

	Logger  zerolog.Logger
	Metrics *Metrics
}

// Worker hosts ChatWorkflow and the activities on one task queue.
type Worker struct {
	w    worker.Worker
	acts *Activities
}

// NewWorker builds a worker on client c; Start or Run runs it.
func NewWorker(c client.Client, o WorkerOptions) (*Worker, error) {
	return newWorker(c, o, ChatWorkflow)
}

// chatWorkflowFunc is ChatWorkflow's signature (tests register older code paths under its name).
type chatWorkflowFunc = func(workflow.Context, ChatInput) (ChatResult, error)

func newWorker(c client.Client, o WorkerOptions, wf chatWorkflowFunc) (*Worker, error) {
	if c == nil || o.Bots == nil || o.Tokens == nil || o.API == nil {
		return nil, errors.New("workflows: NewWorker needs a client, Bots, Tokens and API")
	}
	if o.TaskQueue == "" {
		o.TaskQueue = DefaultTaskQueue
	}
	if o.Agents == nil {
		o.Agents = agents.Builtin()
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{}
	}
	if o.MaxConcurrentActivities <= 0 {
		o.MaxConcurrentActivities = 64
	}
	if o.MaxConcurrentWorkflowTasks <= 0 {
		o.MaxConcurrentWorkflowTasks = 32
	}
	if o.PerBotConcurrency == 0 {
		o.PerBotConcurrency = max(2, o.MaxConcurrentActivities/4)
	}
	if o.MaxQuotaWait <= 0 {
		o.MaxQuotaWait = 3 * time.Second
	}
	if o.LocalAgents == nil {
		o.LocalAgents = []string{"echo"}
	}
	o.Metrics.allowTaskQueue(o.TaskQueue)
	acts := &Activities{
		bots:    o.Bots,
		marks:   o.Marks,
		local:   o.LocalAgents,
		tokens:  o.Tokens,
		api:     o.API,
		pool:    newAgentPool(o.Agents, agents.Env{HTTP: o.HTTP, Secrets: o.Secrets, Logger: o.Logger}),
		quotas:  newQuotas(o.MaxQuotaWait),
		fair:    newFairness(o.PerBotConcurrency),
		metrics: o.Metrics,
		log:     o.Logger,
	}
	acts.quotas.onWait = o.Metrics.quotaWait // agentrunner_workflows_quota_waits_total
	w := worker.New(c, o.TaskQueue, worker.Options{
		MaxConcurrentActivityExecutionSize:     o.MaxConcurrentActivities,
		MaxConcurrentWorkflowTaskExecutionSize: o.MaxConcurrentWorkflowTasks,
		MaxConcurrentWorkflowTaskPollers:       8,
		MaxConcurrentActivityTaskPollers:       8,
	})
	registerChat(w, acts, wf)
	return &Worker{w: w, acts: acts}, nil
}

// Registry is what Register needs of a worker (worker.Worker and the replayer's registry).
type Registry interface {
	RegisterWorkflowWithOptions(w interface{}, options workflow.RegisterOptions)
	RegisterActivityWithOptions(a interface{}, options activity.RegisterOptions)
}

// Register registers ChatWorkflow and, when acts is not nil, the activities under their stable names.
func Register(r Registry, acts *Activities) { registerChat(r, acts, ChatWorkflow) }

func registerChat(r Registry, acts *Activities, wf chatWorkflowFunc) {
	r.RegisterWorkflowWithOptions(wf, workflow.RegisterOptions{Name: ChatWorkflowName})
	if acts == nil {
		return
	}
	for name, fn := range map[string]any{
		ActivityAgent:           acts.RunAgent,
		ActivityRespond:         acts.Respond,
		ActivitySendMessage:     acts.SendMessage,
		ActivitySendChatAction:  acts.SendChatAction,
		ActivityEditMessageText: acts.EditMessageText,
		ActivityDeleteMessage:   acts.DeleteMessage,
		ActivitySendPhoto:       acts.SendPhoto,
		ActivitySendDocument:    acts.SendDocument,
		ActivityLoadChatMark:    acts.LoadChatMark,
		ActivitySaveChatMark:    acts.SaveChatMark,
	} {
		r.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name})
	}
}

// Start starts polling; it returns at once.
func (w *Worker) Start() error {
	if err := w.w.Start(); err != nil {
		return fmt.Errorf("workflows: start worker: %w", err)
	}
	return nil
}

// Stop stops polling, waits for running activities (bounded by the SDK's
// stop timeout) and cleans up the agents.
func (w *Worker) Stop() {
	w.w.Stop()
	w.acts.pool.close()
}

// Run starts the worker and blocks until ctx ends, then stops it.
func (w *Worker) Run(ctx context.Context) error {
	if err := w.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	w.Stop()
	return nil
}
