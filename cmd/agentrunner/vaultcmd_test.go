package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

func TestVaultRotateKeyAndRewrapLocal(t *testing.T) {
	f := newCLIFix(t)
	var ids []string
	for i := range 5 {
		id, tok := f.simBot(t, sim.BotSettings{Handle: fmt.Sprintf("rw_bot_%d", i)})
		f.mustRun(t, tok, append([]string{"bots", "add", "--handle", fmt.Sprintf("rw_bot_%d", i)}, f.full()...)...)
		ids = append(ids, id)
	}
	out := f.mustRun(t, "", append([]string{"vault", "rotate-key"}, f.cipher()...)...)
	if !strings.Contains(out, "is now at version v2") {
		t.Fatalf("rotate-key: %q", out)
	}
	out, errOut, err := f.run(t, "", append([]string{"vault", "rewrap", "--batch-size", "2", "--progress", "always"}, f.cipher()...)...)
	if err != nil {
		t.Fatalf("rewrap: %v\n%s", err, errOut)
	}
	if !regexp.MustCompile(`rewrapped 5 of 5 rows to local:kr_\w+ v2 in .* rows/s\); 0 already current, 0 changed meanwhile, 0 failed`).MatchString(out) {
		t.Fatalf("rewrap output: %q", out)
	}
	if !strings.Contains(errOut, "rewrap") || !strings.Contains(errOut, "5/5") {
		t.Errorf("no progress bar on stderr: %q", errOut)
	}
	if n := f.count(t, `SELECT count(*) FROM secret_vault WHERE ciphertext LIKE 'local:v2:%'`); n != 5 {
		t.Fatalf("%d rows at v2", n)
	}
	for _, id := range ids {
		f.mustRun(t, "", append([]string{"bots", "verify", id}, f.full()...)...)
	}
	out = f.mustRun(t, "", append([]string{"vault", "rewrap", "--progress", "never"}, f.cipher()...)...)
	if !strings.Contains(out, "rewrapped 0 of 5 rows") || !strings.Contains(out, "5 already current") {
		t.Fatalf("second rewrap: %q", out)
	}
	if n := f.count(t, `SELECT count(*) FROM audit_log WHERE action IN ('vault.rotate-key', 'vault.rewrap')`); n != 3 {
		t.Fatalf("audit rows for rotate/rewrap: %d", n)
	}
	if out = f.mustRun(t, "", append([]string{"bots", "show", ids[0]}, f.db()...)...); !strings.Contains(out, " v2") {
		t.Fatalf("show after rewrap: %q", out)
	}
	// Bad input.
	for _, args := range [][]string{
		{"vault", "rewrap", "--batch-size", "0"}, {"vault", "rewrap", "--progress", "sometimes"}, {"vault"}, {"vault", "rotate-key", "extra"},
		{"vault", "rewrap", "--cipher", "transit", "--vault-addr", ""},
	} {
		_, _, err := f.run(t, "", append(args, f.db()...)...)
		if err == nil || !isUsage(err) {
			t.Errorf("%v: want a usage error, got %v", args, err)
		}
	}
	// Another keyring cannot decrypt these rows: rewrap says so and fails.
	other := filepath.Join(t.TempDir(), "other-keyring")
	out, _, err = f.run(t, "", append([]string{"vault", "rewrap", "--cipher", "local", "--keyring", other}, f.db()...)...)
	if err == nil || !strings.Contains(out, "5 failed") {
		t.Fatalf("rewrap with a foreign keyring: %v %q", err, out)
	}
}

// TestVaultCommandsTransit runs the bots and vault commands against the real
// Vault dev server, on a key of the test's own.
func TestVaultCommandsTransit(t *testing.T) {
	addr := testsupport.Getenv(t, "Vault", "VAULT_ADDR", testsupport.ServicesHint)
	token := testsupport.Getenv(t, "Vault", "VAULT_TOKEN", testsupport.ServicesHint)
	key := "cli-" + testsupport.RandHex(5)
	cfg := api.DefaultConfig()
	cfg.Address = addr
	vc, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(token)
	if _, err := vc.Logical().WriteWithContext(context.Background(), "transit/keys/"+key, map[string]any{"derived": true}); err != nil {
		t.Fatalf("create key: %v", err)
	}
	tf := filepath.Join(t.TempDir(), "vault-token")
	_ = os.WriteFile(tf, []byte(token), 0o600)

	f := newCLIFix(t)
	transit := func(args ...string) []string {
		return append(args, "--database-url", f.dsn, "--cipher", "transit", "--vault-addr", addr, "--vault-token-file", tf,
			"--transit-key", key)
	}
	withBuko := func(args ...string) []string { return append(transit(args...), "--buko-api-url", f.sim.URL) }
	var ids []string
	for i := range 3 {
		id, tok := f.simBot(t, sim.BotSettings{Handle: fmt.Sprintf("tr_bot_%d", i)})
		f.mustRun(t, tok, withBuko("bots", "add", "--handle", fmt.Sprintf("tr_bot_%d", i))...)
		ids = append(ids, id)
	}
	if n := f.count(t, `SELECT count(*) FROM secret_vault WHERE ciphertext LIKE 'vault:v1:%' AND key_ref = $1`, "transit:transit/"+key); n != 3 {
		t.Fatalf("%d transit rows", n)
	}
	if out := f.mustRun(t, "", transit("vault", "rotate-key")...); !strings.Contains(out, "transit:transit/"+key+" is now at version v2") {
		t.Fatalf("rotate-key: %q", out)
	}
	if out := f.mustRun(t, "", transit("vault", "rewrap")...); !strings.Contains(out, "rewrapped 3 of 3 rows") {
		t.Fatalf("rewrap: %q", out)
	}
	for _, id := range ids {
		f.mustRun(t, "", withBuko("bots", "verify", id)...)
	}
	// The local keyring cannot read transit rows: a clear mismatch.
	_, _, err = f.run(t, "", append([]string{"bots", "verify", ids[0]}, f.full()...)...)
	if err == nil || !strings.Contains(err.Error(), "row sealed by another key") {
		t.Fatalf("verify with the wrong cipher: %v", err)
	}
}
