package vault

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DefaultRewrapBatch is the number of rows rewrap reads, re-seals and writes at a time.
const DefaultRewrapBatch = 1000

// RewrapOptions configures Store.Rewrap.
type RewrapOptions struct {
	Actor     string // for audit_log
	BatchSize int    // rows per round trip; default DefaultRewrapBatch
	// Progress, if set, is called after each batch with the rows examined so
	// far and the total at the start.
	Progress func(done, total int)
}

// RewrapStats reports a rewrap run.
type RewrapStats struct {
	Version   int // the key version rows were moved to
	Total     int // rows when the run started
	Examined  int // rows looked at
	Rewrapped int // rows re-sealed by this run
	Current   int // rows already at Version
	Changed   int // rows rewritten concurrently (e.g. rotate-token) and left alone
	Failed    int // rows that did not rewrap (sealed by another key, or do not open)
	Duration  time.Duration
}

// Rewrap re-seals every secret_vault row that is not at the cipher's newest
// key version, in batches, online: each batch is one keyed page read, one
// Cipher.Rewrap (no plaintext reaches this process with Transit), and one
// UPDATE that only replaces a row whose ciphertext is still the one read (a
// concurrent rotate-token wins). Readers decrypt old and new rows alike
// throughout. Interrupting it (ctx) loses nothing and a re-run skips rows
// already current. One audit_log row records the run.
func (s *Store) Rewrap(ctx context.Context, o RewrapOptions) (RewrapStats, error) {
	start := time.Now()
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultRewrapBatch
	}
	var st RewrapStats
	latest, err := s.cipher.LatestVersion(ctx)
	if err != nil {
		return st, fmt.Errorf("rewrap: newest key version: %w", err)
	}
	st.Version = latest
	if err := s.db.QueryRow(ctx, `SELECT count(*) FROM secret_vault`).Scan(&st.Total); err != nil {
		return st, fmt.Errorf("rewrap: count rows: %w", err)
	}
	keyRef := s.cipher.KeyRef()
	var (
		after   string
		runErr  error
		failLog int
	)
	for {
		if err := ctx.Err(); err != nil {
			runErr = err
			break
		}
		page, err := s.page(ctx, after, o.BatchSize)
		if err != nil {
			runErr = err
			break
		}
		if len(page) == 0 {
			break
		}
		after = page[len(page)-1].sealed.BotID
		var todo []Sealed
		for _, r := range page {
			st.Examined++
			switch {
			case r.keyRef != keyRef:
				st.Failed++
				if failLog < 10 {
					failLog++
					s.log.Warn().Str("bot_id", r.sealed.BotID).Str("key_ref", r.keyRef).Msg("rewrap: row sealed by another key; left as is")
				}
			case r.sealed.Version() >= latest:
				st.Current++
			default:
				todo = append(todo, r.sealed)
			}
		}
		if len(todo) > 0 {
			n, changed, failed, err := s.rewrapBatch(ctx, todo, keyRef)
			st.Rewrapped += n
			st.Changed += changed
			st.Failed += failed
			if err != nil {
				runErr = err
				break
			}
		}
		if o.Progress != nil {
			o.Progress(st.Examined, st.Total)
		}
	}
	st.Duration = time.Since(start)
	s.metrics.rewrapped(st.Rewrapped)

	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	detail := map[string]any{
		"version": st.Version, "total": st.Total, "rewrapped": st.Rewrapped, "current": st.Current,
		"changed": st.Changed, "failed": st.Failed, "complete": runErr == nil,
	}
	if aerr := Audit(actx, s.db, AuditEntry{Actor: o.Actor, Action: ActionRewrap, Detail: detail}); aerr != nil && runErr == nil {
		runErr = aerr
	}
	if runErr != nil {
		return st, fmt.Errorf("rewrap stopped after %d of %d rows: %w", st.Examined, st.Total, runErr)
	}
	return st, nil
}

type pageRow struct {
	sealed Sealed
	keyRef string
}

func (s *Store) page(ctx context.Context, after string, n int) ([]pageRow, error) {
	rows, err := s.db.Query(ctx, `SELECT bot_id, ciphertext, key_ref FROM secret_vault WHERE bot_id > $1 ORDER BY bot_id LIMIT $2`, after, n)
	if err != nil {
		return nil, fmt.Errorf("rewrap: read rows: %w", err)
	}
	defer rows.Close()
	var out []pageRow
	for rows.Next() {
		var r pageRow
		if err := rows.Scan(&r.sealed.BotID, &r.sealed.Ciphertext, &r.keyRef); err != nil {
			return nil, fmt.Errorf("rewrap: read rows: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("rewrap: read rows: %w", err)
	}
	return out, nil
}

// rewrapBatch re-seals todo and writes back the rows nobody changed meanwhile.
func (s *Store) rewrapBatch(ctx context.Context, todo []Sealed, keyRef string) (rewrapped, changed, failed int, err error) {
	out, err := s.cipher.Rewrap(ctx, todo)
	var be *BatchError
	if err != nil && !errors.As(err, &be) {
		return 0, 0, 0, fmt.Errorf("rewrap: %w", err)
	}
	ids := make([]string, 0, len(todo))
	olds := make([]string, 0, len(todo))
	news := make([]string, 0, len(todo))
	for i, it := range todo {
		if be != nil {
			if ierr := be.Index(i); ierr != nil {
				failed++
				s.log.Warn().Str("bot_id", it.BotID).Err(ierr).Msg("rewrap: row did not rewrap; left as is")
				continue
			}
		}
		ids = append(ids, it.BotID)
		olds = append(olds, it.Ciphertext)
		news = append(news, out[i].Ciphertext)
	}
	if len(ids) == 0 {
		return 0, 0, failed, nil
	}
	tag, err := s.db.Exec(ctx, `UPDATE secret_vault AS s SET ciphertext = u.new, key_ref = $4
		FROM unnest($1::text[], $2::text[], $3::text[]) AS u(bot_id, old, new)
		WHERE s.bot_id = u.bot_id AND s.ciphertext = u.old`, ids, olds, news, keyRef)
	if err != nil {
		return 0, 0, failed, fmt.Errorf("rewrap: write rows: %w", err)
	}
	n := int(tag.RowsAffected())
	return n, len(ids) - n, failed, nil
}
