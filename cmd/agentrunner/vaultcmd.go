package main

// agentrunner vault …: key rotation and rewrap of secret_vault.

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"buko.app/agentrunner/vault"
)

func newVaultCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vault",
		Short: "Rotate the token encryption key and rewrap secret_vault",
		Long: `Operate the encryption of the stored bot tokens.

Tokens in secret_vault are sealed either by Vault Transit (a derived key, one
derivation per bot id) or by the local keyring (AES-256-GCM with the bot id as
associated data, for dev and single machines). --cipher picks one; by default
transit when --vault-addr (VAULT_ADDR) is set, else local.

Rotating a key adds a version: old rows keep decrypting. Rewrap then re-seals
every row under the newest version, online and in batches; it is safe to
interrupt and to run again. See docs/secrets.md.`,
		Example: `  agentrunner vault rotate-key && agentrunner vault rewrap
  VAULT_ADDR=https://vault:8200 VAULT_TOKEN=… agentrunner vault rewrap --batch-size 2000`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("vault needs a subcommand; see agentrunner vault --help")}
		},
	}
	cmd.AddCommand(newVaultRotateKeyCmd(g), newVaultRewrapCmd(g))
	return cmd
}

func newVaultRotateKeyCmd(g *globals) *cobra.Command {
	var (
		db dbFlags
		cf cipherFlags
	)
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Add a new version of the token key (local keyring: a new key; transit: rotate the key)",
		Long: `Add a new key version and make it the one new tokens are sealed with. Rows sealed
by older versions keep decrypting; run "agentrunner vault rewrap" to move them.
With Transit, the Vault token needs update on <mount>/keys/<key>/rotate. The
rotation is written to audit_log.`,
		Example: "  agentrunner vault rotate-key --cipher local --keyring /var/lib/agentrunner/keyring",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := openRegistry(cmd.Context(), g.log, &db, &cf, nil)
			if err != nil {
				return err
			}
			defer env.close()
			v, err := env.cipher.RotateKey(cmd.Context())
			if err != nil {
				return fmt.Errorf("vault rotate-key: %w", err)
			}
			if err := vault.Audit(cmd.Context(), env.pool, vault.AuditEntry{
				Actor: operator(), Action: vault.ActionRotateKey,
				Detail: map[string]any{"key_ref": env.cipher.KeyRef(), "version": v},
			}); err != nil {
				return fmt.Errorf("vault rotate-key: the key was rotated to v%d but the audit row failed: %w", v, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s is now at version v%d; run `agentrunner vault rewrap` to re-seal the existing rows\n", env.cipher.KeyRef(), v)
			return nil
		},
	}
	db.bind(cmd.Flags())
	cf.bind(cmd.Flags())
	return cmd
}

func newVaultRewrapCmd(g *globals) *cobra.Command {
	var (
		db       dbFlags
		cf       cipherFlags
		batch    int
		progress progressFlag
	)
	cmd := &cobra.Command{
		Use:   "rewrap [--batch-size N]",
		Short: "Re-seal every stored token under the newest key version, online",
		Long: `Re-seal every secret_vault row that is not at the newest key version. It works
in batches (one page read, one rewrap call, one conditional UPDATE each) while
runners keep decrypting: old and new rows both decrypt throughout. A row whose
token is rotated meanwhile is left to the rotation. Ctrl-C stops after the
current batch; running it again skips the rows already done.

A progress bar is drawn on stderr when it is a terminal (--progress auto);
the final count goes to stdout. The run is written to audit_log. With Transit
the plaintext never leaves Vault (transit/rewrap).`,
		Example: `  agentrunner vault rewrap
  agentrunner vault rewrap --batch-size 5000 --progress never`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if batch < 1 || batch > 100000 {
				return usageError{fmt.Errorf("--batch-size %d: want 1..100000", batch)}
			}
			showBar, err := progress.show(cmd)
			if err != nil {
				return err
			}
			env, err := openRegistry(cmd.Context(), g.log, &db, &cf, nil)
			if err != nil {
				return err
			}
			defer env.close()

			var b *bar
			report := func(done, total int) {
				if !showBar {
					return
				}
				if b == nil {
					b = newBar(cmd.ErrOrStderr(), total, "rewrap", "rows")
				}
				b.Set(done)
			}
			st, err := env.store.Rewrap(cmd.Context(), vault.RewrapOptions{Actor: operator(), BatchSize: batch, Progress: report})
			_ = b.Exit()
			rate := 0.0
			if s := st.Duration.Seconds(); s > 0 {
				rate = float64(st.Rewrapped) / s
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rewrapped %d of %d rows to %s v%d in %s (%.0f rows/s); %d already current, %d changed meanwhile, %d failed\n",
				st.Rewrapped, st.Total, env.cipher.KeyRef(), st.Version, st.Duration.Round(time.Millisecond), rate, st.Current, st.Changed, st.Failed)
			if err != nil {
				return fmt.Errorf("vault rewrap: %w (run it again to continue)", err)
			}
			if st.Failed > 0 {
				return fmt.Errorf("vault rewrap: %d rows did not rewrap (see the warnings above); they still decrypt only if their key version exists", st.Failed)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&batch, "batch-size", vault.DefaultRewrapBatch, "rows per batch")
	progress.bind(f)
	envFlag(f, "batch-size", "AGENTRUNNER_REWRAP_BATCH_SIZE")
	envFlag(f, "progress", "AGENTRUNNER_PROGRESS")
	db.bind(f)
	cf.bind(f)
	return cmd
}
