package runner

// LISTEN/NOTIFY: one connection listens on the bots and shards channels; a
// bot's change reconciles that bot, a peer's change wakes the ownership.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// botEvent is a NOTIFY payload on BotsChannel: the registry sends the bare
// bot id; the triggers of migration 00002 send this JSON.
type botEvent struct {
	Op    string `json:"op"`
	BotID string `json:"bot_id"`
	Shard *int   `json:"shard"`
}

func (s *Supervisor) onBotNotification(payload string) {
	ev := botEvent{BotID: payload}
	if strings.HasPrefix(payload, "{") {
		if err := json.Unmarshal([]byte(payload), &ev); err != nil {
			s.log.Debug().Err(err).Msg("unreadable bots notification; full pass")
			s.requestFull()
			return
		}
	}
	if ev.BotID == "" {
		return
	}
	if ev.Op == "token" {
		s.cfg.Tokens.Invalidate(ev.BotID)
		return
	}
	if ev.Op == OpReconnect { // the admin API of another replica (admin.go)
		s.Reconnect(ev.BotID)
		return
	}
	if ev.Shard != nil {
		// Only the owner of the shard (or the runner of the bot) cares.
		s.mu.Lock()
		_, running := s.bots[ev.BotID]
		s.mu.Unlock()
		if !running && !s.holdsShard(*ev.Shard) {
			return
		}
	}
	s.touch(ev.BotID)
}

func (s *Supervisor) holdsShard(shard int) bool {
	for _, l := range s.shards.Held() {
		if l.Shard == shard {
			return true
		}
	}
	return false
}

// listen keeps one connection LISTENing on the bots and shards channels,
// reconnecting (and asking for a full pass, since notifications may have been
// missed) whenever it breaks.
func (s *Supervisor) listen(ctx context.Context) {
	first := true
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, first)
		first = false
		if ctx.Err() != nil {
			return
		}
		s.log.Warn().Err(err).Msg("notification connection lost; reconnecting")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *Supervisor) listenOnce(ctx context.Context, first bool) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, s.cfg.Pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, `LISTEN `+BotsChannel+`; LISTEN `+ShardsChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if !first {
		s.requestFull()
		s.shards.Wake()
	}
	idle := max(s.cfg.TTL, 5*time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, idle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("wait: %w", err)
			}
			// Quiet for a while: make sure the connection still answers.
			pctx, cancel := context.WithTimeout(ctx, max(s.cfg.TTL/3, time.Second))
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			continue
		}
		switch n.Channel {
		case BotsChannel:
			s.onBotNotification(n.Payload)
		case ShardsChannel:
			var ev shardsEvent
			if json.Unmarshal([]byte(n.Payload), &ev) == nil && ev.Runner == s.cfg.RunnerID {
				continue
			}
			s.shards.Wake()
		}
	}
}
