package testsupport

import (
	"testing"
	"time"
)

func TestCIMeaning(t *testing.T) {
	for v, want := range map[string]bool{"": false, "0": false, "false": false, "FALSE": false, "true": true, "1": true, "yes": true} {
		t.Setenv("CI", v)
		if got := CI(); got != want {
			t.Errorf("CI=%q: CI() = %v, want %v", v, got, want)
		}
	}
}

func TestTimeoutScalesUnderCI(t *testing.T) {
	t.Setenv("CI", "")
	if got := Timeout(time.Second); got != time.Second {
		t.Errorf("local: %s", got)
	}
	t.Setenv("CI", "true")
	if got := Timeout(time.Second); got != ciFactor*time.Second {
		t.Errorf("CI: %s", got)
	}
}

func TestEventuallyAndReceive(t *testing.T) {
	n := 0
	Eventually(t, "the third poll", func() bool { n++; return n == 3 })
	ch := make(chan int, 1)
	go func() { ch <- 7 }()
	if v := Receive(t, "seven", ch); v != 7 {
		t.Fatalf("got %d", v)
	}
}

func TestRandHexAndRSS(t *testing.T) {
	if a, b := RandHex(6), RandHex(6); len(a) != 12 || a == b {
		t.Fatalf("%q %q", a, b)
	}
	if RSS() == 0 {
		t.Fatal("no VmRSS for this process")
	}
}

func TestMain(m *testing.M) { Main(m) }
