package workflows

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"go.temporal.io/sdk/temporal"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/permanent"
	"buko.app/agentrunner/workflows/agents"
)

// Activities are the worker's activities: the agent and one per Bot API send
// method. Tokens are looked up here, by bot id, for each call; they are never
// an input, a result or a log field.
type Activities struct {
	bots    BotDirectory
	marks   ChatMarks // nil: no watermark beyond a workflow's life
	local   []string  // agent kinds run as local activities
	tokens  Tokens
	api     *buko.Client
	pool    *agentPool
	quotas  *quotas
	fair    *fairness
	metrics *Metrics
	log     zerolog.Logger
}

// busyRetryDelay is the base of the jittered delay before a BOT_BUSY attempt is retried.
const busyRetryDelay = 200 * time.Millisecond

// begin takes the bot's concurrency slot and looks the bot up.
func (a *Activities) begin(ctx context.Context, botID string) (BotSpec, func(), error) {
	if botID == "" {
		return BotSpec{}, nil, temporal.NewNonRetryableApplicationError("activity input has no bot_id", ErrTypeBadInput, nil)
	}
	release, ok := a.fair.acquire(botID)
	if !ok {
		a.metrics.busy()
		delay := busyRetryDelay + rand.N(2*busyRetryDelay)
		return BotSpec{}, nil, temporal.NewApplicationErrorWithOptions("bot is at its concurrency bound in this worker", ErrTypeBotBusy,
			temporal.ApplicationErrorOptions{NextRetryDelay: delay, Category: temporal.ApplicationErrorCategoryBenign})
	}
	spec, err := a.bots.Bot(ctx, botID)
	if err != nil {
		release()
		if errors.Is(err, ErrBotNotFound) {
			return BotSpec{}, nil, temporal.NewNonRetryableApplicationError("bot is not in the bot directory", ErrTypeBotUnknown, nil)
		}
		return BotSpec{}, nil, fmt.Errorf("bot directory: %w", err)
	}
	if spec.ID == "" {
		spec.ID = botID
	}
	return spec, release, nil
}

func (a *Activities) token(ctx context.Context, botID string) (buko.Credential, error) {
	cred, err := a.tokens.Token(ctx, botID)
	if err != nil {
		if errors.Is(err, ErrBotNotFound) {
			return nil, temporal.NewNonRetryableApplicationError("bot has no token", ErrTypeBotUnknown, nil)
		}
		return nil, fmt.Errorf("resolve token: %w", err)
	}
	return cred, nil
}

// RunAgent runs the bot's agent on one update.
func (a *Activities) RunAgent(ctx context.Context, in AgentInput) (AgentOutput, error) {
	spec, release, err := a.begin(ctx, in.BotID)
	if err != nil {
		return AgentOutput{}, err
	}
	defer release()
	actions, err := a.runAgent(ctx, spec, in)
	if err != nil {
		return AgentOutput{}, err
	}
	return AgentOutput{Actions: actions}, nil
}

// runAgent runs spec's agent on one update; an error that retrying cannot
// fix is a non-retryable AGENT_CONFIG or AGENT_BAD_REPLY application error.
func (a *Activities) runAgent(ctx context.Context, spec BotSpec, in AgentInput) ([]agents.Action, error) {
	start := time.Now()
	ag, err := a.pool.get(ctx, spec, a)
	if err != nil {
		a.metrics.agentCall(spec.Agent, "config_error", time.Since(start))
		if permanent.Is(err) {
			return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeAgentConfig, nil)
		}
		return nil, err
	}
	req := agents.Request{
		Bot:    agents.Bot{ID: spec.ID, Handle: spec.Handle, DisplayName: spec.DisplayName},
		ChatID: in.ChatID,
		Update: in.Update,
		Memory: in.Memory,
		Typing: func(ctx context.Context) error { return a.typing(ctx, spec, in.ChatID) },
	}
	actions, err := ag.Handle(ctx, req)
	if err == nil {
		if verr := agents.ValidateActions(actions); verr != nil {
			err = permanent.Mark(fmt.Errorf("agent reply: %w", verr))
		}
	}
	if err != nil {
		if permanent.Is(err) {
			a.metrics.agentCall(spec.Agent, "permanent", time.Since(start))
			a.log.Warn().Str("bot_id", spec.ID).Str("update_id", string(in.Update.UpdateID)).Str("agent", spec.Agent).Err(err).Msg("agent failed for good")
			return nil, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeAgentReply, nil)
		}
		a.metrics.agentCall(spec.Agent, "retry", time.Since(start))
		return nil, fmt.Errorf("agent %s: %w", spec.Agent, err)
	}
	a.metrics.agentCall(spec.Agent, "ok", time.Since(start))
	return actions, nil
}

// LoadChatMark returns the chat's durable watermark ("" without one or
// without a ChatMarks store). A local activity of a fresh chat workflow run.
func (a *Activities) LoadChatMark(ctx context.Context, in ChatMarkInput) (buko.UpdateID, error) {
	if a.marks == nil {
		return "", nil
	}
	if in.BotID == "" || in.ChatID == "" {
		return "", temporal.NewNonRetryableApplicationError("chat mark input needs bot_id and chat_id", ErrTypeBadInput, nil)
	}
	id, err := a.marks.LastHandled(ctx, in.BotID, in.ChatID)
	if err != nil {
		return "", fmt.Errorf("load chat watermark: %w", err)
	}
	return id, nil
}

// SaveChatMark raises the chat's durable watermark to in.ID. A local
// activity of a chat workflow run about to end for quiet time.
func (a *Activities) SaveChatMark(ctx context.Context, in ChatMarkInput) error {
	if a.marks == nil {
		return nil
	}
	if in.BotID == "" || in.ChatID == "" || !in.ID.Valid() {
		return temporal.NewNonRetryableApplicationError("chat mark input needs bot_id, chat_id and a valid update_id", ErrTypeBadInput, nil)
	}
	if err := a.marks.SaveHandled(ctx, in.BotID, in.ChatID, in.ID); err != nil {
		return fmt.Errorf("save chat watermark: %w", err)
	}
	return nil
}

// typing is the best-effort chat action offered to agents: it never waits for quota.
func (a *Activities) typing(ctx context.Context, spec BotSpec, chatID string) error {
	if d, err := a.quotas.wait(ctx, spec.ID, spec.Tier, classAction); err != nil || d > 0 {
		return errors.New("typing skipped: chat action quota")
	}
	cred, err := a.token(ctx, spec.ID)
	if err != nil {
		return err
	}
	start := time.Now()
	err = a.api.SendChatAction(ctx, cred, chatID, buko.ActionTyping)
	a.metrics.apiCall("sendChatAction", err, time.Since(start))
	return err
}

// send is the common path of every Bot API activity: one action of type typ.
func (a *Activities) send(ctx context.Context, typ string, in ActionInput) (ActionResult, error) {
	if in.ChatID == "" {
		return ActionResult{}, temporal.NewNonRetryableApplicationError("activity input has no chat_id", ErrTypeBadInput, nil)
	}
	if err := agents.ValidateActions([]agents.Action{in.Action}); err != nil {
		return ActionResult{}, temporal.NewNonRetryableApplicationError("invalid action: "+err.Error(), ErrTypeBadInput, nil)
	}
	spec, release, err := a.begin(ctx, in.BotID)
	if err != nil {
		return ActionResult{}, err
	}
	defer release()
	return a.perform(ctx, spec, typ, in, a.quotas.maxWait)
}

// perform makes one Bot API call for an action of type typ of bot spec: the
// tier quota (waiting at most maxWait in the worker; a longer wait is a
// QUOTA_WAIT error with its delay), the token, the call, its metrics, and
// the error mapping of apiError. The bot's slot is the caller's.
func (a *Activities) perform(ctx context.Context, spec BotSpec, typ string, in ActionInput, maxWait time.Duration) (ActionResult, error) {
	method, class, call, ok := a.callFor(typ, in)
	if !ok {
		return ActionResult{}, temporal.NewNonRetryableApplicationError("unknown action type", ErrTypeBadInput, nil)
	}
	delay, err := a.quotas.waitUpTo(ctx, spec.ID, spec.Tier, class, maxWait)
	if err != nil {
		return ActionResult{}, err
	}
	if delay > 0 {
		a.metrics.quotaDeferral()
		return ActionResult{}, temporal.NewApplicationErrorWithOptions("waiting for the bot's tier quota", ErrTypeQuotaWait,
			temporal.ApplicationErrorOptions{NextRetryDelay: delay, Category: temporal.ApplicationErrorCategoryBenign})
	}
	cred, err := a.token(ctx, spec.ID)
	if err != nil {
		return ActionResult{}, err
	}
	start := time.Now()
	msg, err := call(ctx, cred)
	d := time.Since(start)
	a.metrics.apiCall(method, err, d)
	if err != nil {
		return ActionResult{}, a.apiError(spec.ID, err)
	}
	if !in.ReceivedAt.IsZero() {
		a.metrics.replied(time.Since(in.ReceivedAt))
	}
	if msg == nil {
		return ActionResult{}, nil
	}
	return ActionResult{MessageID: msg.MessageID}, nil
}

// callFor is the Bot API method, quota class and call of an action of type typ.
func (a *Activities) callFor(typ string, in ActionInput) (string, int, func(context.Context, buko.Credential) (*buko.Message, error), bool) {
	switch typ {
	case agents.ActionSend:
		return "sendMessage", classMessage, func(ctx context.Context, cred buko.Credential) (*buko.Message, error) {
			return a.api.SendMessage(ctx, cred, buko.SendMessageParams{ChatID: in.ChatID, Text: in.Action.Text, ReplyToMessageID: in.Action.ReplyToMessageID})
		}, true
	case agents.ActionTyping:
		action := in.Action.ChatAction
		if action == "" {
			action = buko.ActionTyping
		}
		return "sendChatAction", classAction, func(ctx context.Context, cred buko.Credential) (*buko.Message, error) {
			return nil, a.api.SendChatAction(ctx, cred, in.ChatID, action)
		}, true
	case agents.ActionEdit:
		return "editMessageText", classFree, func(ctx context.Context, cred buko.Credential) (*buko.Message, error) {
			return a.api.EditMessageText(ctx, cred, buko.EditMessageTextParams{ChatID: in.ChatID, MessageID: in.Action.MessageID, Text: in.Action.Text})
		}, true
	case agents.ActionDelete:
		return "deleteMessage", classFree, func(ctx context.Context, cred buko.Credential) (*buko.Message, error) {
			return nil, a.api.DeleteMessage(ctx, cred, in.ChatID, in.Action.MessageID)
		}, true
	case agents.ActionPhoto:
		return "sendPhoto", classMessage, func(ctx context.Context, cred buko.Credential) (*buko.Message, error) {
			return a.api.SendPhoto(ctx, cred, mediaParams(in))
		}, true
	case agents.ActionDocument:
		return "sendDocument", classMessage, func(ctx context.Context, cred buko.Credential) (*buko.Message, error) {
			return a.api.SendDocument(ctx, cred, mediaParams(in))
		}, true
	}
	return "", 0, nil, false
}

// resultOf is the result label of a Bot API call: ok, rate_limited, retry
// (retryable failure) or rejected (failed for good).
func resultOf(err error) string {
	var be *buko.Error
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &be) && be.Status == http.StatusTooManyRequests:
		return "rate_limited"
	case buko.IsRetryable(err):
		return "retry"
	}
	return "rejected"
}

// codeOf is the code label of a Bot API call: "ok", one of the Bot API's
// documented codes, "network" when no complete answer came, or "other"
// (an undocumented code, a malformed answer, a local refusal). Never free text.
func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	var be *buko.Error
	if errors.As(err, &be) {
		switch be.Code {
		case buko.CodeBadRequest, buko.CodeUnauthorized, buko.CodeChatForbidden, buko.CodeBotBlocked,
			buko.CodeMethodNotAllowedForTier, buko.CodeMessageForbidden, buko.CodeChatNotFound,
			buko.CodeGatewayActive, buko.CodeGatewayConnectionLimit, buko.CodePayloadTooLarge,
			buko.CodeRateLimited, buko.CodeInternal:
			return be.Code
		}
		return "other"
	}
	var re *buko.RequestError
	if errors.As(err, &re) {
		return "network"
	}
	return "other"
}

// apiError turns a Bot API error into the activity's error: 400/403/404/413
// and local refusals are non-retryable; 429 retries after retry_after; 401
// drops the cached token and retries (a rotation may have happened); 5xx and
// network failures back off per the retry policy.
func (a *Activities) apiError(botID string, err error) error {
	var be *buko.Error
	if errors.As(err, &be) {
		typ := be.Code
		if typ == "" {
			typ = fmt.Sprintf("HTTP_%d", be.Status)
		}
		switch {
		case be.Local():
			return temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeBadInput, nil)
		case be.Status == http.StatusUnauthorized || be.Code == buko.CodeUnauthorized:
			a.tokens.Invalidate(botID)
			return temporal.NewApplicationError(err.Error(), ErrTypeUnauthorized)
		case be.Status == http.StatusTooManyRequests || be.Code == buko.CodeRateLimited:
			return temporal.NewApplicationErrorWithOptions(err.Error(), buko.CodeRateLimited,
				temporal.ApplicationErrorOptions{NextRetryDelay: be.RetryAfter})
		case buko.IsRetryable(err):
			return temporal.NewApplicationError(err.Error(), typ)
		}
		return temporal.NewNonRetryableApplicationError(err.Error(), typ, nil)
	}
	if buko.IsRetryable(err) {
		return temporal.NewApplicationError(err.Error(), "NETWORK")
	}
	return err
}

// SendMessage performs a "send" action.
func (a *Activities) SendMessage(ctx context.Context, in ActionInput) (ActionResult, error) {
	return a.send(ctx, agents.ActionSend, in)
}

// SendChatAction performs a "typing" action.
func (a *Activities) SendChatAction(ctx context.Context, in ActionInput) (ActionResult, error) {
	return a.send(ctx, agents.ActionTyping, in)
}

// EditMessageText performs an "edit" action.
func (a *Activities) EditMessageText(ctx context.Context, in ActionInput) (ActionResult, error) {
	return a.send(ctx, agents.ActionEdit, in)
}

// DeleteMessage performs a "delete" action.
func (a *Activities) DeleteMessage(ctx context.Context, in ActionInput) (ActionResult, error) {
	return a.send(ctx, agents.ActionDelete, in)
}

// SendPhoto performs a "photo" action.
func (a *Activities) SendPhoto(ctx context.Context, in ActionInput) (ActionResult, error) {
	return a.send(ctx, agents.ActionPhoto, in)
}

// SendDocument performs a "document" action.
func (a *Activities) SendDocument(ctx context.Context, in ActionInput) (ActionResult, error) {
	return a.send(ctx, agents.ActionDocument, in)
}

func mediaParams(in ActionInput) buko.SendMediaParams {
	return buko.SendMediaParams{
		ChatID: in.ChatID, Caption: in.Action.Caption, ReplyToMessageID: in.Action.ReplyToMessageID,
		FileName: in.Action.FileName, MimeType: in.Action.MimeType, Data: in.Action.Data,
	}
}

// agentPool keeps one provisioned agent per bot, rebuilt when the bot's agent
// kind or config changes; replaced agents are cleaned up.
type agentPool struct {
	mu       sync.Mutex
	registry agents.Registry
	env      agents.Env
	byBot    map[string]*pooledAgent
}

type pooledAgent struct {
	kind, config string
	agent        agents.Agent
}

func newAgentPool(reg agents.Registry, env agents.Env) *agentPool {
	return &agentPool{registry: reg, env: env, byBot: map[string]*pooledAgent{}}
}

func (p *agentPool) get(ctx context.Context, spec BotSpec, a *Activities) (agents.Agent, error) {
	kind, cfg := spec.Agent, string(spec.AgentConfig)
	if kind == "" {
		kind = "echo"
	}
	p.mu.Lock()
	cur, ok := p.byBot[spec.ID]
	p.mu.Unlock()
	if ok && cur.kind == kind && cur.config == cfg {
		return cur.agent, nil
	}
	env := p.env
	env.Bot = agents.Bot{ID: spec.ID, Handle: spec.Handle, DisplayName: spec.DisplayName}
	env.Logger = p.env.Logger.With().Str("bot_id", spec.ID).Str("agent", kind).Logger()
	if env.Bot.DisplayName == "" {
		if cred, err := a.token(ctx, spec.ID); err == nil {
			if me, err := a.api.GetMe(ctx, cred); err == nil {
				env.Bot.DisplayName = me.DisplayName
				if env.Bot.Handle == "" {
					env.Bot.Handle = me.Handle
				}
			}
		}
	}
	ag, err := p.registry.Build(ctx, kind, spec.AgentConfig, env)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	old := p.byBot[spec.ID]
	if old != nil && old.kind == kind && old.config == cfg {
		// Another activity built the same agent meanwhile: keep that one.
		p.mu.Unlock()
		cleanup(ag)
		return old.agent, nil
	}
	p.byBot[spec.ID] = &pooledAgent{kind: kind, config: cfg, agent: ag}
	p.mu.Unlock()
	if old != nil {
		// Activities still running on the old agent finish with it; agents
		// that hold resources must tolerate Cleanup during a Handle.
		cleanup(old.agent)
	}
	return ag, nil
}

// close cleans up every agent.
func (p *agentPool) close() {
	p.mu.Lock()
	all := p.byBot
	p.byBot = map[string]*pooledAgent{}
	p.mu.Unlock()
	for _, pa := range all {
		cleanup(pa.agent)
	}
}

func cleanup(a agents.Agent) {
	if c, ok := a.(agents.Cleaner); ok {
		_ = c.Cleanup()
	}
}
