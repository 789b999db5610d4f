package workflows

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Quota tiers of the Bot API (spec §10).
const (
	TierFree     = "free"
	TierPro      = "pro"
	TierTeam     = "team"
	TierOfficial = "official"
)

// TierQuota is one row of the spec's tier table, as far as the worker sends:
// "messages" are sendMessage, sendPhoto and sendDocument; chat actions have
// their own per-minute quota; editMessageText and deleteMessage count against
// neither (the free tier may not call them at all).
type TierQuota struct {
	MessagesPerMinute, MessagesPerDay int
	ActionsPerMinute                  int
	EditDelete                        bool
}

// QuotaFor returns the quota of a tier; an unknown or empty tier gets the
// free tier's, the most conservative.
func QuotaFor(tier string) TierQuota {
	switch tier {
	case TierPro:
		return TierQuota{60, 10_000, 180, true}
	case TierTeam:
		return TierQuota{100, 25_000, 300, true}
	case TierOfficial:
		return TierQuota{120, 50_000, 600, true}
	}
	return TierQuota{20, 1_000, 60, false}
}

// Call classes for quotas.
const (
	classMessage = iota
	classAction
	classFree
)

// quotas holds one set of limiters per bot. Each limiter is a token bucket
// whose burst plus one window's refill equals the window's quota, so no
// sliding window (hence no fixed window either) ever sees more calls than the
// tier allows: 429s become rare, at the price of a sustained rate of ¾ quota.
type quotas struct {
	mu      sync.Mutex
	bots    map[string]*botQuota
	maxWait time.Duration
	now     func() time.Time
	onWait  func() // called when a call waits in the worker (a metric); nil: none
}

type botQuota struct {
	tier                   string
	msgMin, msgDay, actMin *rate.Limiter
}

func newQuotas(maxWait time.Duration) *quotas {
	return &quotas{bots: map[string]*botQuota{}, maxWait: maxWait, now: time.Now}
}

// windowLimiter allows at most n events in any window of length w.
func windowLimiter(n int, w time.Duration) *rate.Limiter {
	burst := max(1, n/4)
	r := rate.Limit(float64(n-burst) / w.Seconds())
	return rate.NewLimiter(r, burst)
}

func (q *quotas) bot(botID, tier string) *botQuota {
	q.mu.Lock()
	defer q.mu.Unlock()
	b, ok := q.bots[botID]
	if !ok || b.tier != tier {
		t := QuotaFor(tier)
		b = &botQuota{
			tier:   tier,
			msgMin: windowLimiter(t.MessagesPerMinute, time.Minute),
			msgDay: windowLimiter(t.MessagesPerDay, 24*time.Hour),
			actMin: windowLimiter(t.ActionsPerMinute, time.Minute),
		}
		q.bots[botID] = b
	}
	return b
}

// wait takes one call of class from the bot's quota. If that needs a wait of
// at most maxWait it waits (honouring ctx) and returns (0, nil); a longer wait
// is not taken: it returns the delay so the caller hands the retry back to
// Temporal instead of holding a worker slot.
func (q *quotas) wait(ctx context.Context, botID, tier string, class int) (time.Duration, error) {
	return q.waitUpTo(ctx, botID, tier, class, q.maxWait)
}

// waitUpTo is wait with maxWait in place of the worker's (0: never wait).
func (q *quotas) waitUpTo(ctx context.Context, botID, tier string, class int, maxWait time.Duration) (time.Duration, error) {
	if class == classFree {
		return 0, nil
	}
	b := q.bot(botID, tier)
	now := q.now()
	var rs []*rate.Reservation
	switch class {
	case classMessage:
		rs = []*rate.Reservation{b.msgMin.ReserveN(now, 1), b.msgDay.ReserveN(now, 1)}
	case classAction:
		rs = []*rate.Reservation{b.actMin.ReserveN(now, 1)}
	}
	var delay time.Duration
	for _, r := range rs {
		if !r.OK() {
			delay = time.Hour
			continue
		}
		delay = max(delay, r.DelayFrom(now))
	}
	if delay == 0 {
		return 0, nil
	}
	if delay > maxWait {
		for _, r := range rs {
			r.CancelAt(now)
		}
		return delay, nil
	}
	if q.onWait != nil {
		q.onWait()
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return 0, nil
	case <-ctx.Done():
		for _, r := range rs {
			r.Cancel()
		}
		return 0, ctx.Err()
	}
}
