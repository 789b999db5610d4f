package testsupport

import (
	"os"
	"strings"
	"testing"
)

// ServicesHint says how to get the development services the tests use.
const ServicesHint = "run `make services` and source ~/.cache/agentrunner/run/services.env"

// CI reports whether the tests run under continuous integration, where every
// service and tool must be present: $CI is set to anything but "", "0" or
// "false" (in any case). This is the only place that decides.
func CI() bool {
	switch strings.ToLower(strings.TrimSpace(os.Getenv("CI"))) {
	case "", "0", "false":
		return false
	}
	return true
}

// Unavailable ends t because service, which t needs, is not available (why):
// a loud skip on a developer machine, a failure under [CI]. how says how to
// get the service.
func Unavailable(t testing.TB, service, why, how string) {
	t.Helper()
	if CI() {
		if how != "" {
			how = "; " + how
		}
		t.Fatalf("%s is required under CI ($CI=%q) but not available: %s%s", service, os.Getenv("CI"), why, how)
	}
	if how != "" {
		how = "\n!!! " + how
	}
	t.Skipf("\n!!! SKIPPED: %s is not available: %s%s\n", service, why, how)
}

// Require is [Unavailable] when missing is not nil, and nothing otherwise.
func Require(t testing.TB, service string, missing error, how string) {
	t.Helper()
	if missing != nil {
		Unavailable(t, service, missing.Error(), how)
	}
}

// Getenv returns $name, or ends t as [Unavailable] when it is empty: service
// is what the variable points at.
func Getenv(t testing.TB, service, name, how string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		Unavailable(t, service, "$"+name+" is not set", how)
	}
	return v
}
