package devstack

// seed.go creates the demo bots, user and chats of a dev run.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/agents"
)

// Chat is a seeded demo chat.
type Chat struct {
	Handle, BotID, ChatID, Agent string
}

// Seed is where the demo goes: the registry's database and cipher, the
// simulator, and the example agent the http bot is wired to.
type Seed struct {
	Pool   *pgxpool.Pool
	Cipher vault.Cipher
	APIURL string // the simulator's base URL
	Agent  *ExampleAgent
	Log    zerolog.Logger
}

// seedActor names dev in audit_log.
const seedActor = "dev"

// demoBot is one seeded bot.
type demoBot struct{ handle, name, agent string }

var demoBots = [...]demoBot{
	{EchoHandle, "Echo", runner.AgentEcho},
	{HTTPHandle, "Example Agent", runner.AgentHTTP},
}

// Run creates the demo bots in the simulator and registers them (a previous
// run's bots of the same handles are removed first: the simulator forgets
// everything when it stops), then the demo user and their chats.
func (s Seed) Run(ctx context.Context) ([]Chat, error) {
	store := vault.NewStore(s.Pool, s.Cipher, s.Log, nil)
	reg := runner.NewRegistry(runner.RegistryConfig{Pool: s.Pool, Store: store, Buko: buko.NewClient(s.APIURL, nil), Logger: s.Log})
	sc := sim.NewControl(s.APIURL, sim.ControlOptions{HTTPClient: &http.Client{Timeout: 10 * time.Second}})
	defer sc.CloseIdleConnections()

	user, err := sc.CreateUser(ctx, UserName, "")
	if err != nil {
		return nil, err
	}
	var chats []Chat
	for _, b := range demoBots {
		created, err := sc.CreateBot(ctx, sim.BotSettings{Handle: b.handle, DisplayName: b.name})
		if err != nil {
			return nil, err
		}
		if err := s.register(ctx, reg, b, created); err != nil {
			return nil, err
		}
		chat, err := sc.OpenPrivateChat(ctx, user.UserID, created.BotID)
		if err != nil {
			return nil, err
		}
		chats = append(chats, Chat{Handle: b.handle, BotID: created.BotID, ChatID: chat.ChatID, Agent: b.agent})
		s.Log.Info().Str("bot_id", created.BotID).Str("handle", b.handle).Str("agent", b.agent).Msg("demo bot seeded")
	}
	return chats, nil
}

// register puts the simulator's new bot in the registry in place of a
// previous run's bot of its handle.
func (s Seed) register(ctx context.Context, reg *runner.Registry, b demoBot, created sim.CreatedBot) error {
	tok, err := vault.ParseToken(created.Token)
	if err != nil {
		return fmt.Errorf("the simulator's token for %s does not parse: %w", b.handle, err)
	}
	if old, err := reg.Get(ctx, b.handle); err == nil {
		if _, err := reg.Remove(ctx, seedActor, old.ID); err != nil {
			return fmt.Errorf("remove the previous %s: %w", b.handle, err)
		}
	}
	req := runner.AddRequest{Actor: seedActor, Handle: b.handle, Agent: b.agent, Token: tok}
	if b.agent == runner.AgentHTTP {
		sealed, err := workflows.SealSecret(ctx, s.Cipher, created.BotID, string(s.Agent.Secret))
		if err != nil {
			return fmt.Errorf("seal the example agent's secret: %w", err)
		}
		if req.AgentConfig, err = json.Marshal(agents.HTTPConfig{URL: s.Agent.URL, Secret: sealed}); err != nil {
			return err
		}
	}
	if _, err := reg.Add(ctx, req); err != nil {
		return fmt.Errorf("register %s: %w", b.handle, err)
	}
	return nil
}
