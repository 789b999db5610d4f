package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/workflows"
)

func TestDirectory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := newPool(t, pgtest.New(t))
	if _, err := pool.Exec(ctx, `INSERT INTO bots (id, handle, display_name, agent, agent_config, quota_tier, shard)
		VALUES ('bot_dir', 'dir_bot', 'Dir', 'http', '{"url":"http://127.0.0.1:9/a"}', 'pro', 1),
		       ('bot_off', 'off_bot', 'Off', 'echo', '{}', '', 2)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE bots SET status = 'disabled' WHERE id = 'bot_off'`); err != nil {
		t.Fatal(err)
	}

	d := NewDirectory(pool, time.Hour)
	spec, err := d.Bot(ctx, "bot_dir")
	if err != nil {
		t.Fatal(err)
	}
	if spec.ID != "bot_dir" || spec.Handle != "dir_bot" || spec.DisplayName != "Dir" || spec.Agent != "http" ||
		spec.Tier != "pro" || !strings.Contains(string(spec.AgentConfig), `"url"`) {
		t.Errorf("spec %+v", spec)
	}
	for _, id := range []string{"bot_missing", "bot_off"} {
		if _, err := d.Bot(ctx, id); !errors.Is(err, workflows.ErrBotNotFound) {
			t.Errorf("%s: %v, want ErrBotNotFound", id, err)
		}
	}

	// Cached for the TTL; a directory without a cache sees the change at once.
	if _, err := pool.Exec(ctx, `UPDATE bots SET agent = 'echo' WHERE id = 'bot_dir'`); err != nil {
		t.Fatal(err)
	}
	if spec, _ := d.Bot(ctx, "bot_dir"); spec.Agent != "http" {
		t.Errorf("cached agent %q, want http", spec.Agent)
	}
	if spec, _ := NewDirectory(pool, 0).Bot(ctx, "bot_dir"); spec.Agent != "echo" {
		t.Errorf("uncached agent %q, want echo", spec.Agent)
	}

	var nilDir *Directory
	if _, err := nilDir.Bot(ctx, "bot_dir"); err == nil {
		t.Error("nil directory: no error")
	}
}
