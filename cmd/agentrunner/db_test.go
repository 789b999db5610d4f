package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/vault"
)

// TestNoTokenLeaks runs the CLI and the runner's token cache with known
// tokens, at debug log level, through success and failure paths, and greps
// everything they printed, logged, returned as errors and exported as
// metrics for those tokens.
func TestNoTokenLeaks(t *testing.T) {
	f := newCLIFix(t)
	ctx := context.Background()
	id, tok := f.simBot(t, sim.BotSettings{Handle: "leak_bot"})
	_, otherTok := f.simBot(t, sim.BotSettings{Handle: "leak_other"})
	secrets := []string{tok, otherTok}

	// The CLI, through its paths.
	f.run(t, tok, append([]string{"bots", "add", "--handle", "not_leak_bot"}, f.full()...)...) // handle mismatch
	f.mustRun(t, tok, append([]string{"bots", "add", "--handle", "leak_bot"}, f.full()...)...)
	f.run(t, tok, append([]string{"bots", "add", "--handle", "leak_bot"}, f.full()...)...) // duplicate
	f.run(t, otherTok, append([]string{"bots", "rotate-token", id}, f.full()...)...)       // another bot's token
	f.mustRun(t, "", append([]string{"bots", "list"}, f.db()...)...)
	f.mustRun(t, "", append([]string{"bots", "list", "-o", "json"}, f.db()...)...)
	f.mustRun(t, "", append([]string{"bots", "show", id, "-o", "json"}, f.db()...)...)
	f.mustRun(t, "", append([]string{"bots", "verify", id}, f.full()...)...)
	newTok := f.simRotate(t, id)
	secrets = append(secrets, newTok)
	f.run(t, "", append([]string{"bots", "verify", id}, f.full()...)...) // the stored token is dead now
	f.mustRun(t, newTok, append([]string{"bots", "rotate-token", id}, f.full()...)...)
	f.mustRun(t, "", append([]string{"vault", "rotate-key"}, f.cipher()...)...)
	f.mustRun(t, "", append([]string{"vault", "rewrap", "--progress", "always"}, f.cipher()...)...)
	f.run(t, newTok, append([]string{"bots", "show", newTok}, f.db()...)...) // a token pasted as BOT
	f.run(t, newTok, append([]string{"bots", "add", "--handle", "x", newTok}, f.full()...)...)

	// The cache, as the runner uses it.
	var logs bytes.Buffer
	log := zerolog.New(&logs).Level(zerolog.TraceLevel)
	kr := vault.NewLocal(f.keyring, nil)
	if err := kr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	store := vault.NewStore(f.pool, kr, log, vault.NewMetrics(reg))
	cache := vault.NewCache(store, vault.CacheOptions{Actor: "runner:leaktest"})
	failed, err := cache.Prefetch(ctx, []string{id, "bot_unknown"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cache.Get(ctx, id)
	if err != nil || got.Reveal() != newTok {
		t.Fatalf("cache: %v", err)
	}
	cred, _ := cache.Token(ctx, id)
	cache.Invalidate(id)
	_, err2 := cache.Get(ctx, "bot_unknown")
	log.Debug().Interface("token", got).Stringer("cred", got).Interface("failed", failed).Msg("cache state")
	log.Info().Msgf("%v %+v %#v %q", got, cred, got, got)
	fmt.Fprintf(&logs, "%v\n%+v\n%v\n", failed, err2, cache)
	var metrics bytes.Buffer
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		_, _ = expfmt.MetricFamilyToText(&metrics, mf)
	}

	all := f.captured.String() + logs.String() + metrics.String()
	if !strings.Contains(all, vault.Redacted) {
		t.Error("the redacted form never showed: is the test exercising the logs?")
	}
	for i, s := range secrets {
		if strings.Contains(all, s) || strings.Contains(all, strings.TrimPrefix(s, "bot_")) {
			j := strings.Index(all, strings.TrimPrefix(s, "bot_"))
			t.Fatalf("secret %d leaked: …%s…", i, strings.ReplaceAll(all[max(0, j-200):j], strings.TrimPrefix(s, "bot_"), "<SECRET>"))
		}
	}
	t.Logf("checked %d bytes of output, logs and metrics", len(all))
}

func TestRedactURL(t *testing.T) {
	if got := redactURL("postgres://u:pw@h/db"); strings.Contains(got, "pw") {
		t.Fatal(got)
	}
	if got := redactURL("postgres://h/db"); got != "postgres://h/db" {
		t.Fatal(got)
	}
	if op := operator(); !strings.HasPrefix(op, "cli:") || !strings.Contains(op, "@") {
		t.Fatal(op)
	}
}

// TestEnvironmentConfiguresCipher: the cipher settings come from the
// environment when no flag is given (docs/architecture.md §10).
func TestEnvironmentConfiguresCipher(t *testing.T) {
	f := newCLIFix(t)
	t.Setenv("DATABASE_URL", f.dsn)
	t.Setenv("AGENTRUNNER_CIPHER", "local")
	t.Setenv("AGENTRUNNER_KEYRING", f.keyring)
	out := f.mustRun(t, "", "vault", "rotate-key")
	if !strings.Contains(out, "v2") {
		t.Fatalf("rotate-key via env: %q", out)
	}
	t.Setenv("AGENTRUNNER_CIPHER", "rot13")
	if _, _, err := f.run(t, "", "vault", "rotate-key"); err == nil || !strings.Contains(err.Error(), `cipher "rot13"`) {
		t.Fatalf("bad cipher via env: %v", err)
	}
}
