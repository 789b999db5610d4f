package workflows

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows/agents"
)

// Names registered with Temporal. Changing any of them breaks running workflows.
const (
	ChatWorkflowName = "ChatWorkflow"
	SignalUpdate     = "update"
	QueryState       = "state"

	ActivityAgent           = "RunAgent"
	ActivitySendMessage     = "SendMessage"
	ActivitySendChatAction  = "SendChatAction"
	ActivityEditMessageText = "EditMessageText"
	ActivityDeleteMessage   = "DeleteMessage"
	ActivitySendPhoto       = "SendPhoto"
	ActivitySendDocument    = "SendDocument"

	// Local activities of the durable per-chat watermark (ChatMarks).
	ActivityLoadChatMark = "LoadChatMark"
	ActivitySaveChatMark = "SaveChatMark"

	// DefaultTaskQueue matches TEMPORAL_TASK_QUEUE's default.
	DefaultTaskQueue = "agentrunner"
)

// Error types of non-retryable activity failures (temporal.ApplicationError.Type()).
const (
	ErrTypeAgentReply   = "AGENT_BAD_REPLY" // the agent answered something unusable
	ErrTypeAgentConfig  = "AGENT_CONFIG"    // the bot's agent config is invalid
	ErrTypeBotUnknown   = "BOT_UNKNOWN"     // the bot is not (or no longer) in the directory
	ErrTypeBotBusy      = "BOT_BUSY"        // retryable: the bot is at its concurrency bound
	ErrTypeQuotaWait    = "QUOTA_WAIT"      // retryable: the bot's tier quota needs a wait
	ErrTypeBadInput     = "BAD_INPUT"       // an activity input that cannot be sent
	ErrTypeUnauthorized = buko.CodeUnauthorized
)

// Tokens resolves bot tokens in the worker (the vault token cache implements
// it). Tokens never enter workflow inputs or history.
type Tokens interface {
	Token(ctx context.Context, botID string) (buko.Credential, error)
	Invalidate(botID string)
}

// BotDirectory tells the worker what a bot is: its agent kind and config, its
// tier. cmd wires it to the bots table.
type BotDirectory interface {
	Bot(ctx context.Context, botID string) (BotSpec, error)
}

// ChatMarks keeps, per chat, the highest update id a chat workflow has
// handled, beyond the workflow's own life: a run that ends after its quiet
// time saves it, and the next fresh run of the chat reads it, so an update
// redelivered however late is still dropped. cmd wires it to the
// chat_watermarks table (runner.ChatMarks).
type ChatMarks interface {
	// LastHandled returns the chat's watermark, "" when it has none.
	LastHandled(ctx context.Context, botID, chatID string) (buko.UpdateID, error)
	// SaveHandled raises the chat's watermark to id; a lower id leaves it as it is.
	SaveHandled(ctx context.Context, botID, chatID string, id buko.UpdateID) error
}

// ChatMarkInput is the input of the watermark activities.
type ChatMarkInput struct {
	BotID  string        `json:"bot_id"`
	ChatID string        `json:"chat_id"`
	ID     buko.UpdateID `json:"update_id,omitempty"` // SaveChatMark only
}

// ErrBotNotFound is returned (wrapped) by a BotDirectory for an unknown bot.
var ErrBotNotFound = errors.New("workflows: bot not found")

// BotSpec is one row of the bot directory.
type BotSpec struct {
	ID          string          `json:"id"`
	Handle      string          `json:"handle"`
	DisplayName string          `json:"display_name"`
	Tier        string          `json:"quota_tier"` // free, pro, team, official; "" → official
	Agent       string          `json:"agent"`      // bots.agent: echo, http, openai
	AgentConfig json.RawMessage `json:"agent_config,omitempty"`
}

// Settings tune the chat workflow. They travel in its input (and across
// continue-as-new), so a replay always sees the values the run started with.
// Zero fields take the defaults.
type Settings struct {
	IdleTimeout      time.Duration `json:"idle_timeout,omitempty"`        // quiet time after which the workflow ends; default 30m
	MaxHistoryEvents int           `json:"max_history_events,omitempty"`  // continue-as-new past this many events; default 8000
	MaxUpdatesPerRun int           `json:"max_updates_per_run,omitempty"` // continue-as-new after this many updates in one run; default 500
	MemoryTurns      int           `json:"memory_turns,omitempty"`        // conversation turns kept; default 20
	MemoryChars      int           `json:"memory_chars,omitempty"`        // characters kept across those turns; default 16000
	AgentTimeout     time.Duration `json:"agent_timeout,omitempty"`       // one agent attempt; default 2m
	SendTimeout      time.Duration `json:"send_timeout,omitempty"`        // one Bot API attempt; default 30s
	RetryInitial     time.Duration `json:"retry_initial,omitempty"`       // first retry back-off; default 1s
	RetryMax         time.Duration `json:"retry_max,omitempty"`           // back-off cap; default 1m
	GiveUpAfter      time.Duration `json:"give_up_after,omitempty"`       // total time for one activity with retries; default 1h

	// Per-run bounds (docs/workflows.md, "Run limits"). A run continues-as-new
	// once it received MaxSignalsPerRun signals or MaxSignalBytesPerRun bytes
	// of them, or its history reached MaxHistoryBytes; the Handoff stops
	// signalling a busy run past the same signal bounds ("chat backlogged").
	// A continue-as-new carries at most MaxCarryUpdates pending updates of at
	// most MaxCarryBytes (JSON) in all; with more pending the run keeps
	// processing instead.
	MaxSignalsPerRun     int `json:"max_signals_per_run,omitempty"`      // default 500 (Temporal refuses signals past 10,000)
	MaxSignalBytesPerRun int `json:"max_signal_bytes_per_run,omitempty"` // default 256 KiB
	MaxCarryUpdates      int `json:"max_carry_updates,omitempty"`        // default 500
	MaxCarryBytes        int `json:"max_carry_bytes,omitempty"`          // default 256 KiB (Temporal's payload limit is 2 MiB)
	MaxHistoryBytes      int `json:"max_history_bytes,omitempty"`        // default 8 MiB (Temporal terminates a run past 50 MiB)
}

// DefaultSettings are the production defaults.
func DefaultSettings() Settings {
	return Settings{
		IdleTimeout:      30 * time.Minute,
		MaxHistoryEvents: 8000,
		MaxUpdatesPerRun: 500,
		MemoryTurns:      20,
		MemoryChars:      16000,
		AgentTimeout:     2 * time.Minute,
		SendTimeout:      30 * time.Second,
		RetryInitial:     time.Second,
		RetryMax:         time.Minute,
		GiveUpAfter:      time.Hour,

		MaxSignalsPerRun:     500,
		MaxSignalBytesPerRun: 256 << 10,
		MaxCarryUpdates:      500,
		MaxCarryBytes:        256 << 10,
		MaxHistoryBytes:      8 << 20,
	}
}

// withDefaults fills zero (or negative) fields.
func (s Settings) withDefaults() Settings {
	d := DefaultSettings()
	orDefault(&s.IdleTimeout, d.IdleTimeout)
	orDefault(&s.MaxHistoryEvents, d.MaxHistoryEvents)
	orDefault(&s.MaxUpdatesPerRun, d.MaxUpdatesPerRun)
	orDefault(&s.MemoryTurns, d.MemoryTurns)
	orDefault(&s.MemoryChars, d.MemoryChars)
	orDefault(&s.AgentTimeout, d.AgentTimeout)
	orDefault(&s.SendTimeout, d.SendTimeout)
	orDefault(&s.RetryInitial, d.RetryInitial)
	orDefault(&s.RetryMax, d.RetryMax)
	orDefault(&s.GiveUpAfter, d.GiveUpAfter)
	orDefault(&s.MaxSignalsPerRun, d.MaxSignalsPerRun)
	orDefault(&s.MaxSignalBytesPerRun, d.MaxSignalBytesPerRun)
	orDefault(&s.MaxCarryUpdates, d.MaxCarryUpdates)
	orDefault(&s.MaxCarryBytes, d.MaxCarryBytes)
	orDefault(&s.MaxHistoryBytes, d.MaxHistoryBytes)
	return s
}

// orDefault sets *v to d unless *v is positive.
func orDefault[T int | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// ChatInput starts (or continues) a chat workflow.
type ChatInput struct {
	BotID    string    `json:"bot_id"`
	ChatID   string    `json:"chat_id"`
	Settings Settings  `json:"settings"`
	State    ChatState `json:"state"`
}

// UpdateSignalVersion is the version of UpdateSignal payloads this build writes.
//
//	0 (absent): a bare buko.Update (every payload before reply-latency metrics)
//	1: the update plus ReceivedAt
const UpdateSignalVersion = 1

// UpdateSignal is the payload of the "update" signal: the update as Buko sent
// it, with what the session knew of it beside the update's own fields (the
// embedded Update's fields are inlined in the JSON). So a payload written as
// a bare buko.Update decodes as an UpdateSignal with zero extras, and a worker
// that knows only buko.Update decodes a new payload and ignores the extras.
// The extras' names are prefixed so no future Bot API field can collide.
type UpdateSignal struct {
	buko.Update
	Version int `json:"agentrunner_signal_version,omitempty"`
	// ReceivedAt is when the session received the update from Buko (zero in
	// version 0 payloads): reply latency is measured from it.
	ReceivedAt time.Time `json:"agentrunner_received_at,omitzero"`
}

// ChatState is what a chat workflow carries across continue-as-new.
type ChatState struct {
	LastUpdateID buko.UpdateID  `json:"last_update_id,omitempty"` // highest update processed (or dropped as failed)
	Memory       []agents.Turn  `json:"memory,omitempty"`
	Pending      []UpdateSignal `json:"pending,omitempty"` // drained signals not yet processed
	Processed    int64          `json:"processed"`
	Duplicates   int64          `json:"duplicates"`
	Failures     int64          `json:"failures"`
	Runs         int            `json:"runs"` // continue-as-new generations so far
	LastError    string         `json:"last_error,omitempty"`
	// Mark is the chat's durable watermark as this chain last read or wrote
	// it (ChatMarks): the idle end writes LastUpdateID only when it is higher.
	Mark buko.UpdateID `json:"mark,omitempty"`
	// RemoteAgent: the bot's agent does not run as a local activity (learnt
	// from a Respond), so the next update goes straight to the regular one.
	RemoteAgent bool `json:"remote_agent,omitempty"`
}

// ChatResult is a chat workflow's result when it ends after its quiet time.
type ChatResult struct {
	LastUpdateID buko.UpdateID `json:"last_update_id,omitempty"`
	Processed    int64         `json:"processed"`
	Duplicates   int64         `json:"duplicates"`
	Failures     int64         `json:"failures"`
}

// StateView answers the "state" query; it holds no user text.
type StateView struct {
	LastUpdateID buko.UpdateID `json:"last_update_id,omitempty"`
	Pending      int           `json:"pending"`
	PendingBytes int           `json:"pending_bytes"`  // SignalSize sum of the pending updates
	Mark         buko.UpdateID `json:"mark,omitempty"` // the chat's durable watermark as this chain knows it
	Processed    int64         `json:"processed"`
	Duplicates   int64         `json:"duplicates"`
	Failures     int64         `json:"failures"`
	Runs         int           `json:"runs"`
	MemoryTurns  int           `json:"memory_turns"`
	LastError    string        `json:"last_error,omitempty"`
}

// AgentInput is the agent activity's input.
type AgentInput struct {
	BotID  string        `json:"bot_id"`
	ChatID string        `json:"chat_id"`
	Update buko.Update   `json:"update"`
	Memory []agents.Turn `json:"memory,omitempty"`
}

// AgentOutput is the agent activity's result.
type AgentOutput struct {
	Actions []agents.Action `json:"actions,omitempty"`
}

// ActionInput is the input of every send activity: one agent action for one chat.
type ActionInput struct {
	BotID  string        `json:"bot_id"`
	ChatID string        `json:"chat_id"`
	Action agents.Action `json:"action"`
	// ReceivedAt is set only on the first reply (a message posted) to an
	// update, to the update's receipt time: the activity records the reply
	// latency when it succeeds. Zero: not measured.
	ReceivedAt time.Time `json:"received_at,omitzero"`
}

// ActionResult is a send activity's result.
type ActionResult struct {
	MessageID string `json:"message_id,omitempty"`
}
