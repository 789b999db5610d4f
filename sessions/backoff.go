package sessions

import (
	"math/rand/v2"
	"time"
)

// backoff is exponential backoff with full jitter: a uniform wait in
// [0, min(max, base·2^attempt)]. attempt counts from 0.
func backoff(attempt int, base, maxWait time.Duration) time.Duration {
	ceil := base
	for i := 0; i < attempt && ceil < maxWait; i++ {
		ceil *= 2
	}
	ceil = min(ceil, maxWait)
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil + 1)
}

// between is a uniform wait in [lo, hi].
func between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo+1)
}
