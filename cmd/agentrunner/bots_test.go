package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
)

// cliFix is a real Postgres database, a simulator and a keyring for
// in-process runs of the CLI.
type cliFix struct {
	dsn, keyring string
	sim          *httptest.Server
	pool         *pgxpool.Pool
	// everything any run printed, for the leak checks
	captured bytes.Buffer
}

func newCLIFix(t *testing.T) *cliFix {
	t.Helper()
	f := &cliFix{dsn: pgtest.New(t), keyring: filepath.Join(t.TempDir(), "keyring")}
	s := sim.New(sim.Options{})
	f.sim = httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); f.sim.Close() })
	pool, err := pgxpool.New(context.Background(), f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	f.pool = pool
	return f
}

// db, cipher and bukoURL are the flags a command of each kind needs.
func (f *cliFix) db() []string { return []string{"--database-url", f.dsn} }
func (f *cliFix) cipher() []string {
	return append(f.db(), "--cipher", "local", "--keyring", f.keyring)
}
func (f *cliFix) full() []string { return append(f.cipher(), "--buko-api-url", f.sim.URL) }

// run executes the CLI in-process with stdin and returns what it printed.
func (f *cliFix) run(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	root := newRootCmd()
	root.SetArgs(append(args, "--log-format", "json", "--log-level", "debug"))
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errb)
	err = root.ExecuteContext(ctx)
	f.captured.WriteString(out.String() + errb.String())
	if err != nil {
		f.captured.WriteString(err.Error() + "\n")
	}
	return out.String(), errb.String(), err
}

// mustRun fails the test unless the command succeeds.
func (f *cliFix) mustRun(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := f.run(t, stdin, args...)
	if err != nil {
		t.Fatalf("agentrunner %s: %v\nstderr: %s", strings.Join(args[:min(3, len(args))], " "), err, errOut)
	}
	return out
}

func (f *cliFix) simBot(t *testing.T, s sim.BotSettings) (id, token string) {
	t.Helper()
	out, err := sim.NewControl(f.sim.URL, sim.ControlOptions{}).CreateBot(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	return out.BotID, out.Token
}

func (f *cliFix) simRotate(t *testing.T, botID string) string {
	t.Helper()
	tok, err := sim.NewControl(f.sim.URL, sim.ControlOptions{}).RotateToken(context.Background(), botID)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *cliFix) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := f.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// rows is the number of rows in the three tables the bots commands write.
func (f *cliFix) rows(t *testing.T) [3]int {
	return [3]int{f.count(t, `SELECT count(*) FROM bots`), f.count(t, `SELECT count(*) FROM secret_vault`), f.count(t, `SELECT count(*) FROM audit_log`)}
}

func isUsage(err error) bool {
	var ue usageError
	return errors.As(err, &ue)
}

func TestBotsCommands(t *testing.T) {
	f := newCLIFix(t)
	id, tok := f.simBot(t, sim.BotSettings{Handle: "helper_bot", DisplayName: "Helper"})
	cfg := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(cfg, []byte(`{"url": "http://127.0.0.1:9/agent", "secret": "env:AGENTRUNNER_AGENT_SECRET_HELPER"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	out := f.mustRun(t, tok+"\n", append([]string{"bots", "add", "--handle", "@helper_bot", "--agent", "http", "--agent-config", cfg, "--delivery", "polling"}, f.full()...)...)
	if out != id+"\n" {
		t.Fatalf("add printed %q, want the bot id %q", out, id)
	}

	out = f.mustRun(t, "", append([]string{"bots", "list"}, f.db()...)...)
	for _, want := range []string{"ID", "HANDLE", id, "@helper_bot", "active", "polling", "http", "v1"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	out = f.mustRun(t, "", append([]string{"bots", "list", "-o", "json"}, f.db()...)...)
	var list []runner.Bot
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].ID != id || list[0].Agent != "http" {
		t.Fatalf("list -o json: %v\n%s", err, out)
	}

	out = f.mustRun(t, "", append([]string{"bots", "show", "helper_bot"}, f.db()...)...)
	for _, want := range []string{"id:", id, "display name:", "Helper", "agent config:", `"url"`, "token key:", "local:kr_", "token rotated:", "never"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	out = f.mustRun(t, "", append([]string{"bots", "show", id, "-o", "json"}, f.db()...)...)
	var shown runner.Bot
	if err := json.Unmarshal([]byte(out), &shown); err != nil || shown.Handle != "helper_bot" || shown.Delivery != "polling" {
		t.Fatalf("show -o json: %v\n%s", err, out)
	}

	if out = f.mustRun(t, "", append([]string{"bots", "pause", "@helper_bot"}, f.db()...)...); !strings.Contains(out, "is now paused") {
		t.Fatalf("pause: %q", out)
	}
	if out = f.mustRun(t, "", append([]string{"bots", "pause", id}, f.db()...)...); !strings.Contains(out, "was already paused") {
		t.Fatalf("pause again: %q", out)
	}
	if out = f.mustRun(t, "", append([]string{"bots", "resume", id}, f.db()...)...); !strings.Contains(out, "is now active") {
		t.Fatalf("resume: %q", out)
	}

	if out = f.mustRun(t, "", append([]string{"bots", "verify", id}, f.full()...)...); !strings.Contains(out, "ok: the stored token of @helper_bot") {
		t.Fatalf("verify: %q", out)
	}
	if n := f.count(t, `SELECT count(*) FROM audit_log WHERE action = 'token.read' AND bot_id = $1 AND detail->>'reason' = 'verify'`, id); n != 1 {
		t.Fatalf("verify's read audited %d times", n)
	}

	// rotate-token: Buko rotates, the old token dies; the CLI stores the new one.
	newTok := f.simRotate(t, id)
	if _, _, err := f.run(t, tok, append([]string{"bots", "rotate-token", id}, f.full()...)...); err == nil || !strings.Contains(err.Error(), "rejected") {
		t.Fatalf("rotate to the dead token: %v", err)
	}
	if _, _, err := f.run(t, "", append([]string{"bots", "verify", id}, f.full()...)...); err == nil || !strings.Contains(err.Error(), "does not work") {
		t.Fatalf("verify of the dead stored token: %v", err)
	}
	tf := filepath.Join(t.TempDir(), "new-token")
	if err := os.WriteFile(tf, []byte(newTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out = f.mustRun(t, "", append([]string{"bots", "rotate-token", "helper_bot", "--token-file", tf}, f.full()...)...); !strings.Contains(out, "stored the new token of @helper_bot") {
		t.Fatalf("rotate-token: %q", out)
	}
	f.mustRun(t, "", append([]string{"bots", "verify", id}, f.full()...)...)
	var rotated *time.Time
	_ = f.pool.QueryRow(context.Background(), `SELECT rotated_at FROM secret_vault WHERE bot_id = $1`, id).Scan(&rotated)
	if rotated == nil {
		t.Fatal("rotated_at not stamped")
	}

	if out = f.mustRun(t, "", append([]string{"bots", "remove", "helper_bot"}, f.db()...)...); !strings.Contains(out, "removed @helper_bot") {
		t.Fatalf("remove: %q", out)
	}
	if r := f.rows(t); r[0] != 0 || r[1] != 0 {
		t.Fatalf("rows after remove: %v", r)
	}
	for _, action := range []string{"bot.add", "bot.pause", "bot.resume", "bot.rotate-token", "bot.remove"} {
		if n := f.count(t, `SELECT count(*) FROM audit_log WHERE action = $1 AND bot_id = $2 AND actor LIKE 'cli:%'`, action, id); n != 1 {
			t.Errorf("audit %s: %d rows", action, n)
		}
	}
	if _, errOut, _ := f.run(t, "", append([]string{"bots", "list"}, f.db()...)...); !strings.Contains(errOut, "no managed bots") {
		t.Errorf("empty list: %q", errOut)
	}
}

// TestBotsAddRefusals: every bad input gets a clear error, usage errors exit
// 2, and nothing is written.
func TestBotsAddRefusals(t *testing.T) {
	f := newCLIFix(t)
	_, tok := f.simBot(t, sim.BotSettings{Handle: "good_bot"})
	_, unofficial := f.simBot(t, sim.BotSettings{Handle: "outside_bot", Official: new(bool), Tier: "free"})
	badCfg := filepath.Join(t.TempDir(), "cfg.json")
	_ = os.WriteFile(badCfg, []byte(`["not", "an", "object"]`), 0o600)
	add := func(extra ...string) []string {
		return append(append([]string{"bots", "add"}, extra...), f.full()...)
	}
	cases := []struct {
		name  string
		stdin string
		args  []string
		usage bool
		msg   string
	}{
		{"empty stdin", "", add("--handle", "good_bot"), true, "no token on standard input"},
		{"blank stdin", " \n\n", add("--handle", "good_bot"), true, "no token on standard input"},
		{"wrong prefix", "xoxb-123-secret\n", add("--handle", "good_bot"), true, `does not begin with "bot_"`},
		{"two tokens", tok + "\n" + tok + "\n", add("--handle", "good_bot"), true, "2 lines"},
		{"no handle", tok, add(), true, "--handle is required"},
		{"bad agent", tok, add("--handle", "good_bot", "--agent", "shell"), true, `agent "shell"`},
		{"bad delivery", tok, add("--handle", "good_bot", "--delivery", "fax"), true, `delivery "fax"`},
		{"agent config not an object", tok, add("--handle", "good_bot", "--agent-config", badCfg), true, "JSON object"},
		{"agent config missing", tok, add("--handle", "good_bot", "--agent-config", "/nonexistent/cfg.json"), true, "--agent-config"},
		{"missing token file", "", add("--handle", "good_bot", "--token-file", "/nonexistent/token"), true, "--token-file"},
		{"getMe 401", "bot_this_token_does_not_exist", add("--handle", "good_bot"), false, "token rejected by Buko"},
		{"not official", unofficial, add("--handle", "outside_bot"), false, "not an official Buko bot"},
		{"handle mismatch", tok, add("--handle", "someone_else"), false, "the token is @good_bot's"},
		{"positional token", tok, append(add("--handle", "good_bot"), tok), true, "takes no arguments"},
		{"bad database url", tok, []string{"bots", "add", "--handle", "good_bot", "--database-url", "postgres://127.0.0.1:1/x?connect_timeout=5", "--cipher", "local", "--keyring", f.keyring, "--buko-api-url", f.sim.URL}, false, "cannot connect to Postgres"},
		{"bad buko url", tok, []string{"bots", "add", "--handle", "good_bot", "--buko-api-url", "ftp://x"}, true, "--buko-api-url"},
	}
	for _, c := range cases {
		_, _, err := f.run(t, c.stdin, c.args...)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %q does not say %q", c.name, err, c.msg)
		}
		if c.usage != isUsage(err) {
			t.Errorf("%s: usage error = %v, want %v (%v)", c.name, isUsage(err), c.usage, err)
		}
		if r := f.rows(t); r != [3]int{} {
			t.Fatalf("%s: partial rows left: %v", c.name, r)
		}
	}

	// Duplicate: the second add of the bot, and another bot id under a managed handle.
	id := strings.TrimSpace(f.mustRun(t, tok, add("--handle", "good_bot")...))
	_, _, err := f.run(t, tok, add("--handle", "good_bot")...)
	if err == nil || !strings.Contains(err.Error(), "already managed") || isUsage(err) {
		t.Fatalf("duplicate add: %v", err)
	}
	_, dupTok := f.simBot(t, sim.BotSettings{Handle: "twin_bot"})
	if _, err := f.pool.Exec(context.Background(), `INSERT INTO bots (id, handle, shard) VALUES ('bot_imported', 'Twin_Bot', 0)`); err != nil {
		t.Fatal(err)
	}
	_, _, err = f.run(t, dupTok, add("--handle", "twin_bot")...)
	if err == nil || !strings.Contains(err.Error(), "handle @Twin_Bot is already managed as bot bot_imported") {
		t.Fatalf("duplicate handle: %v", err)
	}
	if r := f.rows(t); r != [3]int{2, 1, 1} {
		t.Fatalf("rows after the duplicates: %v", r)
	}
	_ = id

	// The known tokens never came back in any output or error.
	for _, secret := range []string{tok, unofficial, dupTok, "bot_this_token_does_not_exist", "xoxb-123-secret"} {
		if i := strings.Index(f.captured.String(), secret); i >= 0 {
			c := f.captured.String()
			t.Fatalf("a token was echoed in the CLI output: ...%s...", strings.ReplaceAll(c[max(0, i-300):i], secret, "<TOKEN>"))
		}
	}
}

// TestBotsUnknownBot: every command naming a bot that is not managed says so.
func TestBotsUnknownBot(t *testing.T) {
	f := newCLIFix(t)
	_, tok := f.simBot(t, sim.BotSettings{Handle: "some_bot"})
	for _, args := range [][]string{
		append([]string{"bots", "show", "nobody"}, f.db()...),
		append([]string{"bots", "pause", "nobody"}, f.db()...),
		append([]string{"bots", "resume", "@nobody"}, f.db()...),
		append([]string{"bots", "remove", "bot_nobody", "--yes"}, f.db()...),
		append([]string{"bots", "rotate-token", "nobody"}, f.full()...),
		append([]string{"bots", "verify", "nobody"}, f.full()...),
	} {
		_, _, err := f.run(t, tok, args...)
		if err == nil || !strings.Contains(err.Error(), "no such managed bot") || isUsage(err) {
			t.Errorf("%s: %v", strings.Join(args[:2], " "), err)
		}
	}
	for _, args := range [][]string{
		{"bots", "show"}, {"bots", "pause", "a", "b"}, {"bots", "show", "x", "-o", "yaml"}, {"bots", "list", "-o", "xml"},
		{"bots"}, {"bots", "add", "--no-such-flag"},
	} {
		_, _, err := f.run(t, "", append(args, f.db()...)...)
		if err == nil || !isUsage(err) {
			t.Errorf("%v: want a usage error, got %v", args, err)
		}
	}
	if r := f.rows(t); r != [3]int{} {
		t.Fatalf("rows: %v", r)
	}
	// rotate-token with empty stdin is refused before anything else.
	_, _, err := f.run(t, "", append([]string{"bots", "rotate-token", "some_bot"}, f.full()...)...)
	if err == nil || !isUsage(err) || !strings.Contains(err.Error(), "no token on standard input") {
		t.Fatalf("rotate-token with empty stdin: %v", err)
	}
}

func TestBotsRotateTokenOfAnotherBot(t *testing.T) {
	f := newCLIFix(t)
	id, tok := f.simBot(t, sim.BotSettings{Handle: "first_bot"})
	_, other := f.simBot(t, sim.BotSettings{Handle: "second_bot"})
	f.mustRun(t, tok, append([]string{"bots", "add", "--handle", "first_bot"}, f.full()...)...)
	_, _, err := f.run(t, other, append([]string{"bots", "rotate-token", id}, f.full()...)...)
	if err == nil || !strings.Contains(err.Error(), "token belongs to another bot") {
		t.Fatalf("rotate to another bot's token: %v", err)
	}
	if n := f.count(t, `SELECT count(*) FROM secret_vault WHERE rotated_at IS NOT NULL`); n != 0 {
		t.Fatal("the row was changed")
	}
}

// TestBotsAddChecksTheAgentConfig: a config the agent kind would refuse is
// refused at bots add, naming the field, with nothing written.
func TestBotsAddChecksTheAgentConfig(t *testing.T) {
	f := newCLIFix(t)
	_, tok := f.simBot(t, sim.BotSettings{Handle: "cfg_bot"})
	t.Setenv("AGENTS_BOTS_TEST_DSN", "postgres://secret-dsn")
	write := func(body string) string {
		p := filepath.Join(t.TempDir(), "agent.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, c := range map[string]struct{ agent, cfg, msg string }{
		"typo":            {"http", `{"urll":"http://127.0.0.1:9/a","secret":"env:AGENTRUNNER_AGENT_SECRET_X"}`, `unknown field "urll"`},
		"wrong type":      {"http", `{"url":"http://127.0.0.1:9/a","secret":"env:AGENTRUNNER_AGENT_SECRET_X","memory_turns":"3"}`, `memory_turns`},
		"no config":       {"http", ``, `url must be`},
		"any env var":     {"openai", `{"model":"m","api_key":"env:AGENTS_BOTS_TEST_DSN","base_url":"http://127.0.0.1:9"}`, `api_key`},
		"plaintext key":   {"openai", `{"model":"m","api_key":"sk-live-plaintext"}`, `api_key`},
		"echo with field": {"echo", `{"greeting":"hi"}`, `unknown field "greeting"`},
		"bad timeout":     {"openai", `{"model":"m","api_key":"local:v1:x","timeout":"soon"}`, `timeout`},
	} {
		args := []string{"bots", "add", "--handle", "cfg_bot", "--agent", c.agent}
		if c.cfg != "" {
			args = append(args, "--agent-config", write(c.cfg))
		}
		_, _, err := f.run(t, tok, append(args, f.full()...)...)
		if err == nil || !isUsage(err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: want a usage error saying %s, got %v", name, c.msg, err)
		}
		if r := f.rows(t); r != [3]int{} {
			t.Fatalf("%s: rows written: %v", name, r)
		}
	}
	if strings.Contains(f.captured.String(), "sk-live") || strings.Contains(f.captured.String(), "secret-dsn") {
		t.Fatal("a secret value was echoed")
	}
	f.mustRun(t, tok, append([]string{"bots", "add", "--handle", "cfg_bot", "--agent", "openai", "--agent-config",
		write(`{"model":"m","api_key":"env:AGENTRUNNER_AGENT_SECRET_OPENAI"}`)}, f.full()...)...)
}

// TestBotsSetAgent: the agent and config change in place, checked like bots
// add, audited, and announced through the bots trigger.
func TestBotsSetAgent(t *testing.T) {
	f := newCLIFix(t)
	id, tok := f.simBot(t, sim.BotSettings{Handle: "switch_bot"})
	f.mustRun(t, tok, append([]string{"bots", "add", "--handle", "switch_bot"}, f.full()...)...)
	ctx := context.Background()
	listen, err := pgx.Connect(ctx, f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(ctx)
	if _, err := listen.Exec(ctx, `LISTEN agentrunner_bots`); err != nil {
		t.Fatal(err)
	}
	agentOf := func() (kind, cfg string) {
		t.Helper()
		if err := f.pool.QueryRow(ctx, `SELECT agent, agent_config::text FROM bots WHERE id = $1`, id).Scan(&kind, &cfg); err != nil {
			t.Fatal(err)
		}
		return kind, cfg
	}
	audits := func() int {
		return f.count(t, `SELECT count(*) FROM audit_log WHERE action = 'bot.set-agent' AND bot_id = $1 AND actor LIKE 'cli:%'`, id)
	}

	// Refused, nothing written.
	for name, c := range map[string]struct {
		args []string
		msg  string
	}{
		"typo":       {[]string{"--agent", "http", "--config", `{"url":"http://127.0.0.1:9/a","secrett":"x"}`}, `unknown field "secrett"`},
		"kind":       {[]string{"--agent", "shell"}, `--agent "shell"`},
		"no kind":    {nil, "--agent is required"},
		"not object": {[]string{"--agent", "http", "--config", `[1]`}, "JSON object"},
		"no file":    {[]string{"--agent", "http", "--config", "@/nonexistent/agent.json"}, "--config"},
		"env var":    {[]string{"--agent", "http", "--config", `{"url":"http://127.0.0.1:9/a","secret":"env:DATABASE_URL"}`}, "secret"},
	} {
		_, _, err := f.run(t, "", append(append([]string{"bots", "set-agent", "switch_bot"}, c.args...), f.db()...)...)
		if err == nil || !isUsage(err) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: want a usage error saying %s, got %v", name, c.msg, err)
		}
	}
	if k, c := agentOf(); k != "echo" || c != "{}" || audits() != 0 {
		t.Fatalf("after refusals: agent %s config %s, %d audits", k, c, audits())
	}

	// From a file: changed, audited, notified.
	cfgFile := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(cfgFile, []byte(`{"url": "http://127.0.0.1:9/agent", "secret": "env:AGENTRUNNER_AGENT_SECRET_SWITCH", "memory_turns": 4}`), 0o600); err != nil {
		t.Fatal(err)
	}
	out := f.mustRun(t, "", append([]string{"bots", "set-agent", "@switch_bot", "--agent", "http", "--config", "@" + cfgFile}, f.db()...)...)
	if !strings.Contains(out, "now has agent http (was echo)") {
		t.Fatalf("set-agent: %q", out)
	}
	if k, c := agentOf(); k != "http" || !strings.Contains(c, `"memory_turns": 4`) || audits() != 1 {
		t.Fatalf("after set-agent: agent %s config %s, %d audits", k, c, audits())
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		n, err := listen.WaitForNotification(wctx)
		if err != nil {
			t.Fatalf("no bots notification for the change: %v", err)
		}
		var ev struct {
			Op    string `json:"op"`
			BotID string `json:"bot_id"`
		}
		_ = json.Unmarshal([]byte(n.Payload), &ev)
		if ev.Op == "update" && ev.BotID == id {
			break
		}
	}

	// The same again: nothing written.
	out = f.mustRun(t, "", append([]string{"bots", "set-agent", id, "--agent", "http", "--config", "@" + cfgFile}, f.db()...)...)
	if !strings.Contains(out, "already has agent http") || audits() != 1 {
		t.Fatalf("unchanged set-agent: %q, %d audits", out, audits())
	}
	// Inline, back to echo with no config.
	f.mustRun(t, "", append([]string{"bots", "set-agent", id, "--agent", "echo"}, f.db()...)...)
	if k, c := agentOf(); k != "echo" || c != "{}" || audits() != 2 {
		t.Fatalf("back to echo: agent %s config %s, %d audits", k, c, audits())
	}
	_, _, err = f.run(t, "", append([]string{"bots", "set-agent", "nobody", "--agent", "echo"}, f.db()...)...)
	if err == nil || !strings.Contains(err.Error(), "no such managed bot") {
		t.Fatalf("unknown bot: %v", err)
	}
}

// TestBotsMigrateSecrets: agent secrets sealed under the old binding (the
// bare bot id) are re-sealed into the agent-secret domain; a bot's own token
// ciphertext in its config is refused, never re-sealed.
func TestBotsMigrateSecrets(t *testing.T) {
	f := newCLIFix(t)
	ctx := context.Background()
	legacyID, legacyTok := f.simBot(t, sim.BotSettings{Handle: "legacy_bot"})
	copyID, copyTok := f.simBot(t, sim.BotSettings{Handle: "copy_bot"})
	f.mustRun(t, legacyTok, append([]string{"bots", "add", "--handle", "legacy_bot"}, f.full()...)...)
	f.mustRun(t, copyTok, append([]string{"bots", "add", "--handle", "copy_bot"}, f.full()...)...)
	kr := vault.NewLocal(f.keyring, nil)
	if err := kr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	// The old format: the secret wrapped as a token, sealed bound to the bot id.
	const secret = "legacy-hmac-secret-0123456789"
	wrapped, _ := vault.ParseToken(vault.TokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(secret)))
	old, err := kr.Encrypt(ctx, []vault.Plaintext{{BotID: legacyID, Token: wrapped}})
	if err != nil {
		t.Fatal(err)
	}
	var tokenCT string
	if err := f.pool.QueryRow(ctx, `SELECT ciphertext FROM secret_vault WHERE bot_id = $1`, copyID).Scan(&tokenCT); err != nil {
		t.Fatal(err)
	}
	setCfg := func(id, ref string) {
		cfg, _ := json.Marshal(map[string]string{"url": "http://127.0.0.1:9/a", "secret": ref})
		if _, err := f.pool.Exec(ctx, `UPDATE bots SET agent = 'http', agent_config = $2::jsonb WHERE id = $1`, id, string(cfg)); err != nil {
			t.Fatal(err)
		}
	}
	setCfg(legacyID, old[0].Ciphertext)
	setCfg(copyID, tokenCT)
	secretOf := func(id string) (string, error) {
		var ref string
		if err := f.pool.QueryRow(ctx, `SELECT agent_config->>'secret' FROM bots WHERE id = $1`, id).Scan(&ref); err != nil {
			t.Fatal(err)
		}
		return workflows.VaultSecrets{Cipher: kr}.Secret(ctx, id, ref)
	}
	if _, err := secretOf(legacyID); !errors.Is(err, workflows.ErrLegacySecret) {
		t.Fatalf("before migration: %v", err)
	}

	out, errOut, err := f.run(t, "", append([]string{"bots", "migrate-secrets"}, f.cipher()...)...)
	if err == nil || !strings.Contains(err.Error(), "1 bot(s) hold their own token") || !strings.Contains(errOut, "copy_bot") {
		t.Fatalf("migrate: want the token copy refused, got %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "@legacy_bot ("+legacyID+"): re-sealed 1") {
		t.Fatalf("migrate output: %q", out)
	}
	if got, err := secretOf(legacyID); err != nil || got != secret {
		t.Fatalf("after migration: %v", err)
	}
	var still string
	_ = f.pool.QueryRow(ctx, `SELECT agent_config->>'secret' FROM bots WHERE id = $1`, copyID).Scan(&still)
	if still != tokenCT {
		t.Fatal("the token copy was rewritten")
	}
	if _, err := secretOf(copyID); !errors.Is(err, workflows.ErrLegacySecret) {
		t.Fatalf("token copy as a secret: %v", err)
	}
	audit := func() int {
		return f.count(t, `SELECT count(*) FROM audit_log WHERE action = 'bot.migrate-secrets' AND bot_id = $1`, legacyID)
	}
	if audit() != 1 {
		t.Fatalf("%d audit rows", audit())
	}
	// Again: nothing left to do.
	if out := f.mustRun(t, "", append([]string{"bots", "migrate-secrets", "legacy_bot"}, f.cipher()...)...); out != "" || audit() != 1 {
		t.Fatalf("second run: %q, %d audit rows", out, audit())
	}
	for _, s := range []string{copyTok, legacyTok, secret} {
		if strings.Contains(f.captured.String(), s) {
			t.Fatal("a secret was echoed")
		}
	}
}
