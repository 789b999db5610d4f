package historycost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/rs/zerolog"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"golang.org/x/sync/errgroup"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/codec"
)

// Patterns of a measured chat.
const (
	Quiet = "quiet" // one message at a time, each answered before the next
	Burst = "burst" // all messages at once
)

// Options configure Run.
type Options struct {
	// Client is a Temporal client with the payload codec (workflows.Dial).
	Client client.Client
	// TaskQueue of the run's own worker; "" → a fresh "history-cost-…" queue.
	TaskQueue string
	// Agents to measure: echo, http, openai (default all three). The http and
	// openai agents talk to services this run starts on 127.0.0.1.
	Agents []string
	// Quiet and Burst are the messages of each agent's quiet chat (one at a
	// time) and busy chat (all at once); default 20 each. The chat's /start
	// greeting comes first and counts as an update too.
	Quiet, Burst int
	// IdleTimeout is the chats' quiet time: the run waits for every chain to
	// end (so its whole history is counted). Default 10 s: longer than a
	// chat takes, as the production 30 min are, so that the quiet-time
	// timer fires only at the end.
	IdleTimeout time.Duration
	// Timeout bounds each chat (default 2 min).
	Timeout time.Duration
	Logger  zerolog.Logger
}

// Result is what one chat's chain cost.
type Result struct {
	Agent            string  `json:"agent"`
	Pattern          string  `json:"pattern"`
	Messages         int     `json:"messages"` // the user's messages, the /start greeting included
	Updates          int     `json:"updates"`  // updates handed off: the messages and any others of the chat (the bot joining it)
	Replies          int     `json:"replies"`  // the bot's messages in the chat at the end
	Cost             Cost    `json:"cost"`
	EventsPerUpdate  float64 `json:"events_per_update"`
	ActionsPerUpdate float64 `json:"actions_per_update"`
	WorkflowID       string  `json:"workflow_id"`
}

// Run plays each agent's quiet and busy chat through a Buko simulator, the
// Handoff and a worker of its own against the Temporal server of o.Client,
// waits until every chat's chain has ended, and counts what its histories
// recorded. Nothing is estimated: the figures are the events of the runs.
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Client == nil {
		return nil, errors.New("historycost: Run needs a client")
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	w, stop, err := start(o)
	if err != nil {
		return nil, err
	}
	defer stop()

	var (
		mu  sync.Mutex
		out []Result
	)
	g, gctx := errgroup.WithContext(ctx)
	for _, agent := range o.Agents {
		for _, pattern := range []string{Quiet, Burst} {
			g.Go(func() error {
				cctx, cancel := context.WithTimeout(gctx, o.Timeout)
				defer cancel()
				r, err := w.chat(cctx, agent, pattern)
				if err != nil {
					return fmt.Errorf("historycost: %s %s chat: %w", agent, pattern, err)
				}
				mu.Lock()
				out = append(out, r)
				mu.Unlock()
				return nil
			})
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Result) int {
		if c := slices.Index(o.Agents, a.Agent) - slices.Index(o.Agents, b.Agent); c != 0 {
			return c
		}
		if a.Pattern == b.Pattern {
			return 0
		}
		if a.Pattern == Quiet {
			return -1
		}
		return 1
	})
	return out, nil
}

func (o Options) withDefaults() (Options, error) {
	if len(o.Agents) == 0 {
		o.Agents = []string{"echo", "http", "openai"}
	}
	for _, a := range o.Agents {
		if a != "echo" && a != "http" && a != "openai" {
			return o, fmt.Errorf("historycost: agent %q: want echo, http or openai", a)
		}
	}
	if o.Quiet <= 0 {
		o.Quiet = 20
	}
	if o.Burst <= 0 {
		o.Burst = 20
	}
	if o.Quiet > 28 || o.Burst > 28 {
		// The official tier's burst is 30 sends a minute: past it the worker
		// paces sends (retries with delays), which is a quota, not a cost, figure.
		return o, errors.New("historycost: at most 28 messages per chat (one bot's send burst)")
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 10 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.TaskQueue == "" {
		o.TaskQueue = fmt.Sprintf("history-cost-%d", time.Now().UnixNano())
	}

	return o, nil
}

// start starts the run's simulator, agent services and worker.
func start(o Options) (*world, func(), error) {
	var servers []*http.Server
	simSrv := sim.New(sim.Options{})
	stop := func() {
		for _, s := range servers {
			_ = s.Close()
		}
		simSrv.Close()
	}
	fail := func(err error) (*world, func(), error) {
		stop()
		return nil, nil, err
	}
	serve := func(h http.Handler) (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", fmt.Errorf("historycost: listen: %w", err)
		}
		s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, s)
		go func() { _ = s.Serve(ln) }()
		return "http://" + ln.Addr().String(), nil
	}
	simURL, err := serve(simSrv)
	if err != nil {
		return fail(err)
	}
	httpURL, err := serve(http.HandlerFunc(httpAgentService))
	if err != nil {
		return fail(err)
	}
	openaiURL, err := serve(http.HandlerFunc(openAIService))
	if err != nil {
		return fail(err)
	}

	w := &world{
		o:       o,
		api:     buko.NewClient(simURL, nil),
		control: sim.NewControl(simURL, sim.ControlOptions{HTTPClient: &http.Client{Timeout: 30 * time.Second}}),
		bots:    &directory{m: map[string]workflows.BotSpec{}},
		tokens:  &tokens{m: map[string]vault.Token{}},
		configs: map[string]json.RawMessage{
			"echo":   nil,
			"http":   json.RawMessage(fmt.Sprintf(`{"url":%q,"secret":%q}`, httpURL+"/agent", benchSecretRef)),
			"openai": json.RawMessage(fmt.Sprintf(`{"base_url":%q,"model":"bench","api_key":%q}`, openaiURL+"/v1", benchSecretRef)),
		},
	}
	wk, err := workflows.NewWorker(o.Client, workflows.WorkerOptions{
		TaskQueue: o.TaskQueue, Bots: w.bots, Tokens: w.tokens, API: w.api,
		Secrets: benchSecrets{}, Logger: o.Logger,
	})
	if err != nil {
		return fail(err)
	}
	if err := wk.Start(); err != nil {
		return fail(err)
	}
	w.handoff = workflows.NewHandoff(o.Client, o.TaskQueue).WithSettings(workflows.Settings{IdleTimeout: o.IdleTimeout})
	return w, func() { wk.Stop(); stop() }, nil

}

// world is what Run's chats share.
type world struct {
	o       Options
	api     *buko.Client
	control *sim.Control
	bots    *directory
	tokens  *tokens
	handoff *workflows.Handoff
	configs map[string]json.RawMessage
	seq     atomic.Int64
}

// chat plays one chat: a bot of its own (so its send quota is its own), a user,
// the /start greeting, then the messages; it waits for every reply and for the
// chain's end, and counts the chain.
func (w *world) chat(ctx context.Context, agent, pattern string) (Result, error) {
	cb, tok, user, sc, err := w.newChat(ctx, agent, pattern)
	if err != nil {
		return Result{}, err
	}
	p := &poller{w: w, bot: cb.BotID, tok: tok}
	// The /start greeting: the chain starts with it, and it is answered first.
	if err := p.handOff(ctx, 1); err != nil {
		return Result{}, err
	}
	messages := 1
	if err := w.awaitReplies(ctx, sc.ChatID, messages); err != nil {
		return Result{}, err
	}
	switch pattern {
	case Quiet:
		for i := range w.o.Quiet {
			if _, err := w.control.Say(ctx, sc.ChatID, user.UserID, fmt.Sprintf("quiet message %d", i+1)); err != nil {
				return Result{}, err
			}
			messages++
			if err := p.handOff(ctx, 1); err != nil {
				return Result{}, err
			}
			if err := w.awaitReplies(ctx, sc.ChatID, messages); err != nil {
				return Result{}, err
			}
		}
	case Burst:
		for i := range w.o.Burst {
			if _, err := w.control.Say(ctx, sc.ChatID, user.UserID, fmt.Sprintf("burst message %d", i+1)); err != nil {
				return Result{}, err
			}
		}
		messages += w.o.Burst
		if err := p.handOff(ctx, w.o.Burst); err != nil {
			return Result{}, err
		}
		if err := w.awaitReplies(ctx, sc.ChatID, messages); err != nil {
			return Result{}, err
		}
	}
	id := workflows.WorkflowID(cb.BotID, sc.ChatID)
	if err := w.awaitEnd(ctx, id); err != nil {
		return Result{}, err
	}
	runs, err := Chain(ctx, w.o.Client, id)
	if err != nil {
		return Result{}, err
	}
	replies, err := w.replies(ctx, sc.ChatID)
	if err != nil {
		return Result{}, err
	}
	c := CountChain(runs)
	updates := p.handed
	return Result{
		Agent: agent, Pattern: pattern, Messages: messages, Updates: updates, Replies: replies, Cost: c, WorkflowID: id,
		EventsPerUpdate:  round2(float64(c.Events) / float64(updates)),
		ActionsPerUpdate: round2(float64(c.Actions) / float64(updates)),
	}, nil
}

func round2(f float64) float64 { return math.Round(f*100) / 100 }

// newChat creates a bot of its own for agent (in the simulator and the
// run's directory), a user and their private chat (the /start greeting).
func (w *world) newChat(ctx context.Context, agent, tag string) (sim.CreatedBot, vault.Token, sim.UserView, sim.StartedChat, error) {
	var (
		tok  vault.Token
		user sim.UserView
		sc   sim.StartedChat
	)
	handle := fmt.Sprintf("cost_%s_%s_%d", agent, tag, w.seq.Add(1))
	cb, err := w.control.CreateBot(ctx, sim.BotSettings{Handle: handle, DisplayName: "Cost " + agent})
	if err != nil {
		return cb, tok, user, sc, err
	}
	tok, err = vault.ParseToken(cb.Token)
	if err != nil {
		return cb, tok, user, sc, err
	}
	w.tokens.set(cb.BotID, tok)
	w.bots.set(workflows.BotSpec{ID: cb.BotID, Handle: handle, DisplayName: "Cost " + agent, Tier: workflows.TierOfficial,
		Agent: agent, AgentConfig: w.configs[agent]})
	user, err = w.control.CreateUser(ctx, "cost "+handle, "")
	if err != nil {
		return cb, tok, user, sc, err
	}
	sc, err = w.control.OpenPrivateChat(ctx, user.UserID, cb.BotID)
	return cb, tok, user, sc, err
}

// poller stands in for a bot's session: it reads the bot's updates by
// polling and hands each off, in order, as a session lane does.
type poller struct {
	w      *world
	bot    string
	tok    vault.Token
	offset buko.UpdateID
	handed int
}

// handOff reads at least n more updates of the bot (all it gets) and hands
// them off one by one.
func (p *poller) handOff(ctx context.Context, n int) error {
	var got []buko.Update
	for len(got) < n {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		us, err := p.w.api.GetUpdates(pctx, p.tok, buko.GetUpdatesParams{Offset: p.offset, Timeout: 1})
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if buko.IsRetryable(err) {
				continue
			}
			return fmt.Errorf("getUpdates: %w", err)
		}
		for _, u := range us {
			got = append(got, u)
			p.offset = u.UpdateID.Next()
		}
	}
	for _, u := range got {
		if err := p.w.handoff.Handoff(ctx, p.bot, u); err != nil {
			return fmt.Errorf("handoff of %s: %w", u.UpdateID, err)
		}
		p.handed++
	}
	return nil
}

func (w *world) replies(ctx context.Context, chatID string) (int, error) {
	tr, err := w.control.Transcript(ctx, chatID, "")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range tr {
		if m.FromKind == "bot" {
			n++
		}
	}
	return n, nil
}

// pollEvery is how often Run looks at a transcript or a workflow's status.
const pollEvery = 5 * time.Millisecond

func (w *world) awaitReplies(ctx context.Context, chatID string, want int) error {
	for {
		n, err := w.replies(ctx, chatID)
		if err != nil {
			return err
		}
		if n >= want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d replies of %d: %w", n, want, ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

// awaitEnd waits until the chain's latest run has completed (its quiet time passed).
func (w *world) awaitEnd(ctx context.Context, id string) error {
	for {
		d, err := w.o.Client.DescribeWorkflow(ctx, id, "")
		if err != nil {
			return err
		}
		st := d.RawResponse.GetWorkflowExecutionInfo().GetStatus()
		switch st {
		case enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED:
			return nil
		case enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING, enumspb.WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW:
		default:
			return fmt.Errorf("workflow %s ended %s", id, st)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("workflow %s still %s: %w", id, st, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Dial connects to Temporal with the payload codec and a fresh random key:
// the run's workflows are its own, nothing else needs to read them.
func Dial(ctx context.Context, address, namespace string, log zerolog.Logger) (client.Client, error) {
	k, err := codec.GenerateKey()
	if err != nil {
		return nil, err
	}
	kr, err := codec.NewKeyring("history-cost", map[string][]byte{"history-cost": k})
	if err != nil {
		return nil, err
	}
	return workflows.Dial(ctx, workflows.DialOptions{Address: address, Namespace: namespace, Keys: kr, Logger: log})
}

// WriteText prints results as a table: per chat, updates, events and actions
// in all and per update, and the events by type.
func WriteText(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "agent\tchat\tmessages\tupdates\treplies\truns\tevents\tevents/update\tactions\tactions/update\tevents by type")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%.2f\t%d\t%.2f\t%s\n", r.Agent, r.Pattern, r.Messages, r.Updates, r.Replies, r.Cost.Runs,
			r.Cost.Events, r.EventsPerUpdate, r.Cost.Actions, r.ActionsPerUpdate, top(r.Cost.ByEvent, 20))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nactions by kind:")
	for _, r := range results {
		fmt.Fprintf(w, "  %s %s: %s\n", r.Agent, r.Pattern, top(r.Cost.ByKind, 20))
	}
	return nil
}
