package runner

// The reconcile: the loop that makes the sessions of this replica match the
// active bots of the shards it holds, by a full pass, for newly claimed
// shards, or for the bots a notification named.

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// botRow is one bot as the reconcile sees it.
type botRow struct {
	id, status, delivery string
	shard                int
}

func (s *Supervisor) kick() {
	select {
	case s.work <- struct{}{}:
	default:
	}
}

// requestFull asks for a full pass.
func (s *Supervisor) requestFull() {
	s.mu.Lock()
	s.full = true
	s.mu.Unlock()
	s.kick()
}

// touch asks for a reconcile of individual bots (after notifications).
func (s *Supervisor) touch(ids ...string) {
	s.mu.Lock()
	for _, id := range ids {
		s.touched[id] = true
	}
	s.mu.Unlock()
	s.kick()
}

func (s *Supervisor) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.requestFull()
			continue
		case <-s.work:
		}
		for ctx.Err() == nil {
			s.mu.Lock()
			full, shards, touched := s.full, s.newShards, s.touched
			s.full, s.newShards = false, nil
			if len(touched) > 0 {
				s.touched = map[string]bool{}
			} else {
				touched = nil
			}
			s.mu.Unlock()
			var err error
			switch {
			case full:
				err = s.reconcileFull(ctx)
			case len(shards) > 0:
				err = s.reconcileShards(ctx, shards)
			case len(touched) > 0:
				err = s.reconcileBots(ctx, touched)
			}
			if err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("reconcile failed; the next full pass retries")
				// Keep the work: a full pass covers it.
				s.mu.Lock()
				s.full = true
				s.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				continue
			}
			if !full && len(shards) == 0 && len(touched) == 0 {
				break
			}
		}
	}
}

// reconcileFull makes the sessions match every active bot of every active lease.
func (s *Supervisor) reconcileFull(ctx context.Context) error {
	s.cfg.Metrics.reconciled("full")
	// Bots of every held shard, those being released included (their
	// sessions are Lost's to stop), but new sessions only on active leases.
	rows, err := s.queryBots(ctx, `SELECT id, status, delivery, shard FROM bots WHERE shard = ANY($1)`, leaseShardsInt32(s.shards.Held()))
	if err != nil {
		return err
	}
	byShard := map[int]Lease{}
	for _, l := range s.activeLeases() {
		byShard[l.Shard] = l
	}
	desired := map[string]botRow{}
	for _, r := range rows {
		if r.status == StatusActive {
			desired[r.id] = r
		}
	}
	var stop []*botRun
	s.mu.Lock()
	for id, b := range s.bots {
		if d, ok := desired[id]; !ok || d.delivery != b.delivery || s.shards.Holds(b.lease) != nil {
			stop = append(stop, b)
			s.detachLocked(b)
		}
	}
	s.mu.Unlock()
	s.stopBots(ctx, stop)
	return s.startBots(ctx, desired, byShard)
}

// reconcileShards starts the active bots of newly claimed shards.
func (s *Supervisor) reconcileShards(ctx context.Context, leases []Lease) error {
	s.cfg.Metrics.reconciled("shards")
	byShard := map[int]Lease{}
	for _, l := range leases {
		if s.shards.Active(l) {
			byShard[l.Shard] = l
		}
	}
	if len(byShard) == 0 {
		return nil
	}
	shards := make([]int32, 0, len(byShard))
	for sh := range byShard {
		shards = append(shards, int32(sh))
	}
	t0 := time.Now()
	rows, err := s.queryBots(ctx, `SELECT id, status, delivery, shard FROM bots WHERE shard = ANY($1) AND status = 'active'`, shards)
	if err != nil {
		return err
	}
	s.log.Debug().Int("shards", len(shards)).Int("bots", len(rows)).Dur("query", time.Since(t0)).Msg("reconcile claimed shards")
	desired := map[string]botRow{}
	for _, r := range rows {
		desired[r.id] = r
	}
	return s.startBots(ctx, desired, byShard)
}

// reconcileBots re-reads the named bots and starts or stops their sessions.
func (s *Supervisor) reconcileBots(ctx context.Context, touched map[string]bool) error {
	s.cfg.Metrics.reconciled("bot")
	ids := make([]string, 0, len(touched))
	for id := range touched {
		ids = append(ids, id)
	}
	rows, err := s.queryBots(ctx, `SELECT id, status, delivery, shard FROM bots WHERE id = ANY($1)`, ids)
	if err != nil {
		return err
	}
	found := map[string]botRow{}
	for _, r := range rows {
		found[r.id] = r
	}
	byShard := map[int]Lease{}
	for _, l := range s.activeLeases() {
		byShard[l.Shard] = l
	}
	desired := map[string]botRow{}
	var stop []*botRun
	s.mu.Lock()
	for _, id := range ids {
		r, ok := found[id]
		want := ok && r.status == StatusActive
		if want {
			if _, owned := byShard[r.shard]; !owned {
				want = false
			}
		}
		b := s.bots[id]
		if b != nil && (!ok || r.status != StatusActive || b.delivery != r.delivery || s.shards.Holds(b.lease) != nil) {
			stop = append(stop, b)
			s.detachLocked(b)
			b = nil
		}
		if want && b == nil {
			desired[id] = r
		}
	}
	s.mu.Unlock()
	s.stopBots(ctx, stop)
	return s.startBots(ctx, desired, byShard)
}

func (s *Supervisor) activeLeases() []Lease {
	var out []Lease
	for _, l := range s.shards.Held() {
		if s.shards.Active(l) {
			out = append(out, l)
		}
	}
	return out
}

func (s *Supervisor) queryBots(ctx context.Context, sql string, arg any) ([]botRow, error) {
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := s.writePool.Query(qctx, sql, arg)
	if err != nil {
		return nil, fmt.Errorf("runner: read bots: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (botRow, error) {
		var b botRow
		err := r.Scan(&b.id, &b.status, &b.delivery, &b.shard)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("runner: read bots: %w", err)
	}
	return out, nil
}
