package runner

// The dead-letter views of the admin server: GET /api/v1/dead-letters (the
// list, never a payload) and the per-bot counts of the status page.

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// deadLetterCount is one bot's pending dead letters on the status page.
type deadLetterCount struct {
	BotID, Handle string
	N             int
}

func (a *Admin) deadLetters() *DeadLetterStore { return NewDeadLetterStore(a.cfg.Pool, nil) }

// listDeadLetters: GET /api/v1/dead-letters[?bot_id=B][&pending=true][&limit=N].
func (a *Admin) listDeadLetters(w http.ResponseWriter, r *http.Request) (any, error) {
	q := r.URL.Query()
	f := DeadLetterFilter{BotID: q.Get("bot_id")}
	if len(f.BotID) > 200 || strings.ContainsFunc(f.BotID, func(c rune) bool { return c < 0x21 || c == 0x7f }) {
		return nil, errf(http.StatusBadRequest, "invalid bot_id: want 1 to 200 printable characters without spaces")
	}
	switch q.Get("pending") {
	case "", "false":
	case "true":
		f.Pending = true
	default:
		return nil, errf(http.StatusBadRequest, "pending: want true or false")
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return nil, errf(http.StatusBadRequest, "limit: want 1 to 1000")
		}
		f.Limit = n
	}
	dls, err := a.deadLetters().List(r.Context(), f)
	if err != nil {
		return nil, err
	}
	pending := 0
	for _, d := range dls {
		if d.ReplayedAt == nil {
			pending++
		}
	}
	return map[string]any{"dead_letters": dls, "pending": pending}, nil
}

// deadLetterCounts returns the pending dead letters per bot (with handles
// from bots), largest first, and their total. A failed read yields nothing:
// the page still renders.
func (a *Admin) deadLetterCounts(ctx context.Context, bots []BotView) ([]deadLetterCount, int) {
	counts, err := a.deadLetters().PendingByBot(ctx)
	if err != nil {
		a.log.Warn().Err(err).Msg("status page: dead letters not read")
		return nil, 0
	}
	handles := map[string]string{}
	for _, b := range bots {
		handles[b.ID] = b.Handle
	}
	var out []deadLetterCount
	total := 0
	for id, n := range counts {
		out = append(out, deadLetterCount{BotID: id, Handle: handles[id], N: n})
		total += n
	}
	slices.SortFunc(out, func(x, y deadLetterCount) int {
		if x.N != y.N {
			return y.N - x.N
		}
		return strings.Compare(x.BotID, y.BotID)
	})
	return out, total
}
