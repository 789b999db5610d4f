package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// readmeFirstServe returns the command lines of README.md's "A first
// `serve`" block, comments and blank lines left out.
func readmeFirstServe(t *testing.T) [][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds [][]string
	inSection, inBlock := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
			if inSection && !inBlock {
				return cmds // the next heading ends the section
			}
			inSection = strings.HasPrefix(line, "### A first `serve`")
		case inSection && strings.HasPrefix(line, "```"):
			if inBlock {
				return cmds
			}
			inBlock = true
		case inBlock:
			if i := strings.Index(line, "#"); i >= 0 {
				line = line[:i]
			}
			if fields := strings.Fields(line); len(fields) > 0 {
				cmds = append(cmds, fields)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cmds
}

// TestReadmeFirstServe runs README's first-serve walk, line by line and
// nothing else, as a newcomer would: the environment the README tells the
// operator to set (a test database, the Temporal dev server, the simulator,
// the local keyring by default under $XDG_DATA_HOME), token.txt in the
// working directory. serve must answer a user's message and drain on cancel.
func TestReadmeFirstServe(t *testing.T) {
	addr := needTemporal(t)
	cmds := readmeFirstServe(t)
	if len(cmds) == 0 {
		t.Fatal("README.md has no \"A first `serve`\" block")
	}
	f := newCLIFix(t)
	botID, token := f.simBot(t, sim.BotSettings{Handle: "helper_bot", DisplayName: "Helper"})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "token.txt"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	// What the README says to set, and what makes the run the test's own.
	t.Setenv("DATABASE_URL", f.dsn)
	t.Setenv("TEMPORAL_ADDRESS", addr)
	t.Setenv("BUKO_API_URL", f.sim.URL)
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	for _, v := range []string{"VAULT_ADDR", "VAULT_TOKEN", "AGENTRUNNER_CIPHER", "AGENTRUNNER_KEYRING", "AGENTRUNNER_PAYLOAD_KEYS", "BUKO_GATEWAY_URL"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	t.Setenv("TEMPORAL_TASK_QUEUE", fmt.Sprintf("readme-%d", time.Now().UnixNano()))
	t.Setenv("AGENTRUNNER_ADMIN_ADDR", "127.0.0.1:0")
	t.Setenv("AGENTRUNNER_LEASE_TTL", "3s")

	ran := false
	for _, c := range cmds {
		if c[0] != "agentrunner" {
			t.Fatalf("README line %q is not an agentrunner command", strings.Join(c, " "))
		}
		args, stdin := c[1:], ""
		if i := indexOf(args, "<"); i >= 0 {
			if i != len(args)-2 {
				t.Fatalf("README line %q: only `< file` at the end is understood", strings.Join(c, " "))
			}
			b, err := os.ReadFile(args[i+1])
			if err != nil {
				t.Fatal(err)
			}
			args, stdin = args[:i], string(b)
		}
		if args[0] == "serve" {
			readmeServe(t, f, botID, args)
			ran = true
			continue
		}
		if _, errOut, err := f.run(t, stdin, args...); err != nil {
			t.Fatalf("agentrunner %s: %v\n%s", strings.Join(args, " "), err, errOut)
		}
	}
	if !ran {
		t.Fatal("README's first-serve block never runs serve")
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// readmeServe runs serve (args from the README), has a user write to the
// bot, waits for the echo, then cancels and expects a clean drain.
func readmeServe(t *testing.T, f *cliFix, botID string, args []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &serveLog{}
	done := make(chan error, 1)
	go func() { done <- serveRoot(ctx, append(args, "--log-format", "json"), out) }()
	defer func() {
		if t.Failed() {
			t.Logf("serve output:\n%s", out.String())
		}
	}()

	sc := sim.NewControl(f.sim.URL, sim.ControlOptions{})
	u, err := sc.CreateUser(ctx, "Una", "una")
	if err != nil {
		t.Fatal(err)
	}
	c, err := sc.OpenPrivateChat(ctx, u.UserID, botID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Say(ctx, c.ChatID, u.UserID, "hello from the README"); err != nil {
		t.Fatal(err)
	}
	testsupport.Within(t, "the echo reply", 2*time.Minute, whileServing(t, done, "the echo reply", func() bool {
		tr, err := sc.Transcript(ctx, c.ChatID, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range tr {
			if m.FromKind == "bot" && m.Text == "hello from the README" {
				return true
			}
		}
		return false
	}))
	cancel()
	if err := testsupport.ReceiveWithin(t, "serve to stop after its cancel", time.Minute, done); err != nil {
		t.Fatalf("serve after drain: %v", err)
	}
}
