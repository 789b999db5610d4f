package workflows

import (
	"context"
	"errors"
	"time"

	"go.temporal.io/sdk/temporal"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows/agents"
)

// ActivityRespond runs a bot's agent and performs its actions in one
// activity: as a local activity for agents that run in the worker (echo),
// on a batch of updates, within LocalBudget; as a regular activity, with
// Temporal's retries, on one update of any agent. Actions it could not
// perform at once are left to the workflow, which sends them as regular send
// activities with durable retries (docs/workflows.md, "Event budget").
const ActivityRespond = "Respond"

// LocalBudget bounds the work of one local Respond: past it, it stops and
// reports what it did, so that its local-activity timeout (which would lose
// that report) is never reached.
const LocalBudget = 3 * time.Second

// localTimeout is the local Respond's start-to-close timeout: well past LocalBudget.
const localTimeout = 10 * time.Second

// RespondUpdate is one update of a Respond.
type RespondUpdate struct {
	Update     buko.Update `json:"update"`
	ReceivedAt time.Time   `json:"received_at,omitzero"` // the first reply measures the update's reply latency from it
}

// RespondInput is the input of Respond.
type RespondInput struct {
	BotID   string          `json:"bot_id"`
	ChatID  string          `json:"chat_id"`
	Updates []RespondUpdate `json:"updates"`
	Memory  []agents.Turn   `json:"memory,omitempty"`
	// MemoryTurns and MemoryChars trim the memory between the updates of a
	// batch exactly as the workflow trims it (Settings).
	MemoryTurns int `json:"memory_turns,omitempty"`
	MemoryChars int `json:"memory_chars,omitempty"`
	// Local: run as a local activity. Only agents that run in the worker are
	// run (else Remote comes back), sends never wait for quota, and the work
	// stops at LocalBudget.
	Local bool `json:"local,omitempty"`
	// Linger (local only): after its replies are out, keep the workflow task
	// open this much longer, so that the updates of a busy chat arriving
	// meanwhile are taken together by the next task (they are delivered when
	// this one completes). Costs no reply any latency.
	Linger time.Duration `json:"linger,omitempty"`
}

// Turn is what Respond did for one update.
type Turn struct {
	Actions []agents.Action `json:"actions,omitempty"` // the agent's answer
	Done    int             `json:"done"`              // Actions[:Done] were performed, in order
	// AgentError is the error type of an agent that failed for good (no
	// actions then); ActionError the type of the failure for good of
	// Actions[Done] (the reply's other actions are skipped).
	AgentError  string `json:"agent_error,omitempty"`
	ActionError string `json:"action_error,omitempty"`
}

// RespondResult is Respond's result: one Turn for each update handled, in
// order, a prefix of the input's updates (at least one for a regular Respond).
type RespondResult struct {
	Turns []Turn `json:"turns,omitempty"`
	// Remote: the bot's agent does not run locally (a local Respond did nothing).
	Remote bool `json:"remote,omitempty"`
	// Local: the bot's agent could run locally (a regular Respond's hint).
	Local bool `json:"local,omitempty"`
}

// runsLocally reports whether agents of kind run as local activities.
func (a *Activities) runsLocally(kind string) bool {
	if kind == "" {
		kind = "echo"
	}
	for _, k := range a.local {
		if k == kind {
			return true
		}
	}
	return false
}

// Respond runs the bot's agent on each update and performs its actions, in
// order. It stops at the first action that is not done at once (its turn
// says how far it got) and, when local, at the first agent error that is not
// for good and at LocalBudget. It fails only before anything was sent.
func (a *Activities) Respond(ctx context.Context, in RespondInput) (RespondResult, error) {
	if in.ChatID == "" || len(in.Updates) == 0 {
		return RespondResult{}, temporal.NewNonRetryableApplicationError("respond input needs a chat_id and updates", ErrTypeBadInput, nil)
	}
	maxWait := a.quotas.maxWait
	if in.Local {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, LocalBudget)
		defer cancel()
		maxWait = 0
	}
	spec, release, err := a.begin(ctx, in.BotID)
	if err != nil {
		return RespondResult{}, err
	}
	defer release()
	local := a.runsLocally(spec.Agent)
	if in.Local && !local {
		return RespondResult{Remote: true}, nil
	}
	out := RespondResult{Local: local}
	memory := in.Memory
	for _, u := range in.Updates {
		if ctx.Err() != nil {
			break
		}
		actions, err := a.runAgent(ctx, spec, AgentInput{BotID: in.BotID, ChatID: in.ChatID, Update: u.Update, Memory: memory})
		if err != nil {
			var ae *temporal.ApplicationError
			if errors.As(err, &ae) && ae.NonRetryable() {
				out.Turns = append(out.Turns, Turn{AgentError: ae.Type()})
				break // the workflow records it and tells the chat, in order
			}
			if len(out.Turns) == 0 && !in.Local {
				return RespondResult{}, err // retried by Temporal: nothing was sent
			}
			break
		}
		turn := Turn{Actions: actions}
		replied := false
		for _, act := range actions {
			ai := ActionInput{BotID: in.BotID, ChatID: in.ChatID, Action: act}
			if !replied && isReply(act.Type) {
				ai.ReceivedAt = u.ReceivedAt
			}
			if _, err := a.perform(ctx, spec, act.Type, ai, maxWait); err != nil {
				var ae *temporal.ApplicationError
				if errors.As(err, &ae) && ae.NonRetryable() {
					turn.ActionError = ae.Type()
				}
				break
			}
			replied = replied || isReply(act.Type)
			turn.Done++
		}
		out.Turns = append(out.Turns, turn)
		if turn.Done < len(actions) {
			break
		}
		memory = appendMemory(memory, agents.MessageText(u.Update), sentTexts(actions), in.MemoryTurns, in.MemoryChars)
	}
	if in.Local && in.Linger > 0 && len(out.Turns) == len(in.Updates) {
		t := time.NewTimer(min(in.Linger, maxLinger))
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return out, nil
}

// maxLinger bounds RespondInput.Linger.
const maxLinger = 300 * time.Millisecond

// sentTexts are the texts of the "send" actions among actions.
func sentTexts(actions []agents.Action) []string {
	var out []string
	for _, a := range actions {
		if a.Type == agents.ActionSend {
			out = append(out, a.Text)
		}
	}
	return out
}

// appendMemory appends the user's text and the bot's replies to m and trims
// it to turns turns and chars characters (the chat workflow's memory rule).
func appendMemory(m []agents.Turn, user string, replies []string, turns, chars int) []agents.Turn {
	if user == "" && len(replies) == 0 {
		return m
	}
	m = append([]agents.Turn(nil), m...)
	if user != "" {
		m = append(m, agents.Turn{Role: agents.RoleUser, Text: user})
	}
	for _, r := range replies {
		m = append(m, agents.Turn{Role: agents.RoleAssistant, Text: r})
	}
	return trimMemory(m, turns, chars)
}
