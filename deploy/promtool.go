package deploy

import (
	"errors"
	"os"
	"os/exec"
	"testing"

	"buko.app/agentrunner/internal/testsupport"
)

// Promtool locates promtool, which checks and unit-tests the rules in
// deploy/prometheus: $AGENTRUNNER_PROMTOOL_BIN, else the one on PATH. The
// error says how to get one (`make services` installs it).
func Promtool() (string, error) {
	if p := os.Getenv("AGENTRUNNER_PROMTOOL_BIN"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p, nil
	}
	return "", errors.New("no promtool on PATH: run `bash deploy/dev/promtool.sh` (make services does) or set AGENTRUNNER_PROMTOOL_BIN")
}

// RequirePromtool is [Promtool] for a test that needs it: without promtool
// the test skips, or fails under CI (the rule of internal/testsupport).
func RequirePromtool(t testing.TB) string {
	t.Helper()
	p, err := Promtool()
	testsupport.Require(t, "promtool", err, "")
	return p
}
