package testsupport

import (
	"testing"
	"time"
)

// DefaultWait bounds [Eventually] and [Receive] before CI scaling: generous,
// so a loaded machine is only slow, never flaky.
const DefaultWait = 60 * time.Second

// ciFactor is how much longer every wait may take under [CI].
const ciFactor = 3

// Timeout is d as a test's bound: d on a developer machine, ciFactor × d
// under [CI]. A wait bound is a deadline for "it never happened", never a
// measurement; a test that asserts how fast something happens measures it.
func Timeout(d time.Duration) time.Duration {
	if CI() {
		return ciFactor * d
	}
	return d
}

// Eventually polls cond until it holds, and fails t after [Timeout]([DefaultWait]).
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	Within(t, what, DefaultWait, cond)
}

// Within is [Eventually] bounded by [Timeout](d).
func Within(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	Until(t, what, d, func() (bool, string) { return cond(), "" })
}

// Until is [Within] for a condition that says what it sees: cond returns
// whether it holds and, when not, the state that the failure reports (the
// last one seen).
func Until(t testing.TB, what string, d time.Duration, cond func() (bool, string)) {
	t.Helper()
	d = Timeout(d)
	deadline := time.Now().Add(d)
	pause := time.Millisecond
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			if last != "" {
				t.Fatalf("timed out after %s waiting for %s (last: %s)", d, what, last)
			}
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(pause) // polling a condition, bounded by the deadline
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// Receive returns the next value from ch, and fails t when none comes within
// [Timeout]([DefaultWait]) or ch is closed.
func Receive[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	return ReceiveWithin(t, what, DefaultWait, ch)
}

// ReceiveWithin is [Receive] bounded by [Timeout](d).
func ReceiveWithin[T any](t testing.TB, what string, d time.Duration, ch <-chan T) T {
	t.Helper()
	d = Timeout(d)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("waiting for %s: the channel was closed", what)
		}
		return v
	case <-timer.C:
		t.Fatalf("timed out after %s waiting for %s", d, what)
	}
	var zero T
	return zero
}
