package runner

// The bot directory of the Temporal worker: what a bot is (agent kind and
// config, tier), read from the bots table with a short cache.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"buko.app/agentrunner/workflows"
)

// DefaultBotCacheTTL is how long a Directory keeps a bot's row.
const DefaultBotCacheTTL = 10 * time.Second

// Directory implements workflows.BotDirectory on the bots table. Each bot's
// row is cached for the TTL, so an activity does not cost a query; a change
// (agent, config, tier, status) is seen within the TTL.
type Directory struct {
	pool *pgxpool.Pool
	ttl  time.Duration
	mu   sync.Mutex
	seen map[string]cachedBot
}

type cachedBot struct {
	spec workflows.BotSpec
	at   time.Time
}

var _ workflows.BotDirectory = (*Directory)(nil)

// NewDirectory reads bots through pool, caching each for ttl (0 → no cache;
// negative → DefaultBotCacheTTL).
func NewDirectory(pool *pgxpool.Pool, ttl time.Duration) *Directory {
	if ttl < 0 {
		ttl = DefaultBotCacheTTL
	}
	return &Directory{pool: pool, ttl: ttl, seen: map[string]cachedBot{}}
}

// Bot implements workflows.BotDirectory. A disabled or missing bot is
// workflows.ErrBotNotFound (its activities stop retrying).
func (d *Directory) Bot(ctx context.Context, botID string) (workflows.BotSpec, error) {
	if d == nil || d.pool == nil {
		return workflows.BotSpec{}, errors.New("runner: directory has no database pool")
	}
	d.mu.Lock()
	c, ok := d.seen[botID]
	d.mu.Unlock()
	if ok && time.Since(c.at) < d.ttl {
		return c.spec, nil
	}
	var (
		s      workflows.BotSpec
		cfg    []byte
		status string
	)
	err := d.pool.QueryRow(ctx, `SELECT id, handle, display_name, agent, agent_config, quota_tier, status FROM bots WHERE id = $1`, botID).
		Scan(&s.ID, &s.Handle, &s.DisplayName, &s.Agent, &cfg, &s.Tier, &status)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && status == "disabled") {
		d.forget(botID)
		return workflows.BotSpec{}, fmt.Errorf("bot %s: %w", botID, workflows.ErrBotNotFound)
	}
	if err != nil {
		return workflows.BotSpec{}, fmt.Errorf("read bot %s: %w", botID, err)
	}
	if len(cfg) > 0 {
		s.AgentConfig = json.RawMessage(cfg)
	}
	if d.ttl > 0 {
		d.mu.Lock()
		d.seen[botID] = cachedBot{spec: s, at: time.Now()}
		d.mu.Unlock()
	}
	return s, nil
}

func (d *Directory) forget(botID string) {
	d.mu.Lock()
	delete(d.seen, botID)
	d.mu.Unlock()
}
