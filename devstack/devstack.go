// Package devstack is the logic of `agentrunner dev`: the whole system on
// one developer machine, on embedded defaults. It makes the local state a
// first run needs (the database, the payload key file, the admin token),
// starts the parts that are not agentrunner's own (the Buko simulator, a
// persistent Temporal dev server as a child process, the example agent
// service), seeds demo bots and a demo user, and prints the banner that says
// where everything is. cmd/agentrunner's dev command is the flags around it
// and runs the serve replica itself; docs/dev.md is the developer's guide.
package devstack

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
)

// The seeded demo, and the child Temporal server's default port.
const (
	EchoHandle          = "echo_bot"
	HTTPHandle          = "example_agent_bot"
	UserName            = "Demo User"
	DefaultTemporalPort = 7243
)

// SettingError is a setting of the developer's that dev cannot work with
// (a database URL that is not one, no temporal CLI): the caller's mistake,
// not the system's failure.
type SettingError struct{ Err error }

func (e *SettingError) Error() string { return e.Err.Error() }
func (e *SettingError) Unwrap() error { return e.Err }

// DefaultDir is $XDG_DATA_HOME/agentrunner/dev ("" when neither
// XDG_DATA_HOME nor a home folder is known).
func DefaultDir() string {
	base := os.Getenv("XDG_DATA_HOME")
	if base == "" {
		if home, err := os.UserHomeDir(); err == nil {
			base = filepath.Join(home, ".local", "share")
		}
	}
	if base == "" {
		return ""
	}
	return filepath.Join(base, "agentrunner", "dev")
}

// AdminTokenPath is where dev keeps the admin API's bearer token.
func AdminTokenPath(dataDir string) string { return filepath.Join(dataDir, "admin-token") }

// EnsureAdminToken makes a random admin token in a 0600 file of the data
// folder unless one is there, so dev's admin API accepts writes (pause,
// resume, reconnect, drain) from whoever can read the file. It returns the path.
func EnsureAdminToken(dataDir string, log zerolog.Logger) (string, error) {
	path := AdminTokenPath(dataDir)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return path, nil
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // crypto/rand.Read never fails on Linux
	tok := base64.RawURLEncoding.EncodeToString(raw) + "\n"
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		return "", fmt.Errorf("admin token file: %w", err)
	}
	log.Info().Str("file", path).Msg("admin token file created")
	return path, nil
}
