package sim

import (
	"math"
	"time"
)

// Quota tiers (spec §10).
const (
	TierFree     = "free"
	TierPro      = "pro"
	TierTeam     = "team"
	TierOfficial = "official"
)

// tierLimits is one row of the spec's tier table. "Messages" counts
// sendMessage, sendPhoto and sendDocument; "polls" counts getUpdates; chat
// actions have no daily quota in the table and get none here.
type tierLimits struct {
	msgPerMin, msgPerDay   int
	pollPerMin, pollPerDay int
	actionPerMin           int
	editDelete             bool
}

func limitsFor(tier string) (tierLimits, bool) {
	switch tier {
	case TierFree:
		return tierLimits{20, 1_000, 30, 10_000, 60, false}, true
	case TierPro:
		return tierLimits{60, 10_000, 60, 50_000, 180, true}, true
	case TierTeam:
		return tierLimits{100, 25_000, 100, 100_000, 300, true}, true
	case TierOfficial:
		return tierLimits{120, 50_000, 120, 200_000, 600, true}, true
	}
	return tierLimits{}, false
}

// window counts calls in fixed windows: the clock minute and the UTC day of
// Options.Now. Guarded by its bot's mu.
type window struct {
	minute, day           int64 // window index (Unix seconds / length)
	minuteCount, dayCount int
}

// take counts one call at now unless a limit is already reached; then it
// returns the seconds (≥ 1) until the exceeded window resets and counts
// nothing. A limit ≤ 0 means no limit for that window.
func (w *window) take(now time.Time, perMinute, perDay int) (retryAfter int) {
	sec := now.Unix()
	if m := floorDiv(sec, 60); m != w.minute {
		w.minute, w.minuteCount = m, 0
	}
	if d := floorDiv(sec, 86_400); d != w.day {
		w.day, w.dayCount = d, 0
	}
	wait := 0
	if perDay > 0 && w.dayCount >= perDay {
		wait = secondsUntil(now, (w.day+1)*86_400)
	}
	if perMinute > 0 && w.minuteCount >= perMinute {
		wait = max(wait, secondsUntil(now, (w.minute+1)*60))
	}
	if wait > 0 {
		return wait
	}
	w.minuteCount++
	w.dayCount++
	return 0
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// secondsUntil is the whole seconds, rounded up and at least 1, from now to
// the Unix second end.
func secondsUntil(now time.Time, end int64) int {
	d := time.Unix(end, 0).Sub(now)
	return max(1, int(math.Ceil(d.Seconds())))
}
