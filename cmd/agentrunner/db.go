package main

// Settings shared by the subcommands that touch Postgres, the token cipher
// and Buko: the flags (each with its environment variable), and how they open
// a pool, a cipher, a store and a registry. serve and worker reuse them.

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/user"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/spf13/pflag"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
)

// defaultDatabaseURL is DATABASE_URL's default (docs/architecture.md §10).
const defaultDatabaseURL = "postgres://localhost:5432/agentrunner?sslmode=disable"

// dbFlags is --database-url.
type dbFlags struct{ url string }

func (d *dbFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&d.url, "database-url", defaultDatabaseURL, "Postgres connection URL")
	envFlag(fs, "database-url", "DATABASE_URL")
}

// open connects a pool and checks that Postgres answers.
func (d *dbFlags) open(ctx context.Context) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(d.url)
	if err != nil {
		return nil, usageError{fmt.Errorf("--database-url: %w", err)}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres at %s: %w", redactURL(d.url), err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("cannot connect to Postgres at %s (set --database-url or DATABASE_URL): %w", redactURL(d.url), err)
	}
	return pool, nil
}

// redactURL hides a password in a connection URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// cipherFlags selects and configures the token cipher.
type cipherFlags struct {
	kind, keyring                      string
	addr, auth, tokenFile              string
	approleRoleID, approleSecretIDFile string
	approleMount                       string
	k8sRole, k8sTokenFile, k8sMount    string
	mount, key                         string
	batch                              int
}

func (c *cipherFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&c.kind, "cipher", "", `token cipher: "transit" (Vault Transit) or "local" (keyring file); default transit when --vault-addr is set, else local`)
	fs.StringVar(&c.keyring, "keyring", "", "local keyring file (default $XDG_DATA_HOME/agentrunner/keyring)")
	fs.StringVar(&c.addr, "vault-addr", "", "Vault address, e.g. https://vault:8200 (VAULT_TOKEN, VAULT_CACERT, VAULT_NAMESPACE… are read as by the vault CLI)")
	fs.StringVar(&c.auth, "vault-auth", vault.AuthToken, "Vault auth method: token, approle or kubernetes")
	fs.StringVar(&c.tokenFile, "vault-token-file", "", "file holding the Vault token (token auth; default $VAULT_TOKEN)")
	fs.StringVar(&c.approleRoleID, "vault-approle-role-id", "", "AppRole role id")
	fs.StringVar(&c.approleSecretIDFile, "vault-approle-secret-id-file", "", "file holding the AppRole secret id (read at each login)")
	fs.StringVar(&c.approleMount, "vault-approle-mount", vault.DefaultAppRoleMount, "AppRole auth mount path")
	fs.StringVar(&c.k8sRole, "vault-k8s-role", "", "Vault role for Kubernetes auth")
	fs.StringVar(&c.k8sTokenFile, "vault-k8s-token-file", vault.DefaultK8sTokenFile, "service account token file for Kubernetes auth")
	fs.StringVar(&c.k8sMount, "vault-k8s-mount", vault.DefaultK8sMount, "Kubernetes auth mount path")
	fs.StringVar(&c.mount, "transit-mount", vault.DefaultTransitMount, "Vault Transit mount path")
	fs.StringVar(&c.key, "transit-key", vault.DefaultTransitKey, "Vault Transit key name (a derived key)")
	fs.IntVar(&c.batch, "transit-batch-size", vault.DefaultBatchSize, "tokens per Transit call")
	envFlag(fs, "cipher", "AGENTRUNNER_CIPHER")
	envFlag(fs, "keyring", "AGENTRUNNER_KEYRING")
	envFlag(fs, "vault-addr", "VAULT_ADDR")
	envFlag(fs, "vault-auth", "AGENTRUNNER_VAULT_AUTH")
	envFlag(fs, "vault-token-file", "AGENTRUNNER_VAULT_TOKEN_FILE")
	envFlag(fs, "vault-approle-role-id", "AGENTRUNNER_VAULT_APPROLE_ROLE_ID")
	envFlag(fs, "vault-approle-secret-id-file", "AGENTRUNNER_VAULT_APPROLE_SECRET_ID_FILE")
	envFlag(fs, "vault-approle-mount", "AGENTRUNNER_VAULT_APPROLE_MOUNT")
	envFlag(fs, "vault-k8s-role", "AGENTRUNNER_VAULT_K8S_ROLE")
	envFlag(fs, "vault-k8s-token-file", "AGENTRUNNER_VAULT_K8S_TOKEN_FILE")
	envFlag(fs, "vault-k8s-mount", "AGENTRUNNER_VAULT_K8S_MOUNT")
	envFlag(fs, "transit-mount", "AGENTRUNNER_TRANSIT_MOUNT")
	envFlag(fs, "transit-key", "AGENTRUNNER_TRANSIT_KEY")
	envFlag(fs, "transit-batch-size", "AGENTRUNNER_TRANSIT_BATCH_SIZE")
}

func (c *cipherFlags) config(log zerolog.Logger, m *vault.Metrics) vault.Config {
	return vault.Config{
		Cipher:  c.kind,
		Keyring: c.keyring,
		Logger:  log,
		Metrics: m,
		Transit: vault.TransitConfig{
			Address: c.addr, Mount: c.mount, Key: c.key, BatchSize: c.batch,
			Auth: c.auth, TokenFile: c.tokenFile,
			AppRoleRoleID: c.approleRoleID, AppRoleSecretIDFile: c.approleSecretIDFile, AppRoleMount: c.approleMount,
			KubernetesRole: c.k8sRole, KubernetesTokenFile: c.k8sTokenFile, KubernetesMount: c.k8sMount,
		},
	}
}

// open provisions the configured cipher; the caller Cleanups it.
func (c *cipherFlags) open(ctx context.Context, log zerolog.Logger, m *vault.Metrics) (vault.Cipher, error) {
	cfg := c.config(log, m)
	if k := cfg.ResolvedKind(); k == vault.KindTransit && cfg.Transit.Address == "" {
		return nil, usageError{fmt.Errorf("--cipher transit needs --vault-addr (or VAULT_ADDR)")}
	}
	ci, err := vault.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("token cipher (%s): %w", cfg.ResolvedKind(), err)
	}
	return ci, nil
}

// bukoFlags is --buko-api-url.
type bukoFlags struct{ apiURL string }

func (b *bukoFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&b.apiURL, "buko-api-url", buko.DefaultAPIURL, "Buko Bot API base URL (the simulator's URL in dev)")
	envFlag(fs, "buko-api-url", "BUKO_API_URL")
}

func (b *bukoFlags) client() (*buko.Client, error) {
	u, err := url.Parse(b.apiURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usageError{fmt.Errorf("--buko-api-url %q: want an http:// or https:// URL", b.apiURL)}
	}
	return buko.NewClient(b.apiURL, nil), nil
}

// registryEnv is what the bots and vault commands open: Postgres, the
// cipher, the secret store and the registry. close releases them all.
type registryEnv struct {
	pool   *pgxpool.Pool
	cipher vault.Cipher
	store  *vault.Store
	reg    *runner.Registry
}

func (e *registryEnv) close() {
	if e.cipher != nil {
		_ = e.cipher.Cleanup()
	}
	if e.pool != nil {
		e.pool.Close()
	}
}

// openRegistry opens what bots and vault commands need. bf may be nil for
// commands that never call Buko.
func openRegistry(ctx context.Context, log zerolog.Logger, db *dbFlags, cf *cipherFlags, bf *bukoFlags) (*registryEnv, error) {
	env := &registryEnv{}
	var verifier runner.Verifier
	if bf != nil {
		c, err := bf.client()
		if err != nil {
			return nil, err
		}
		verifier = c
	}
	pool, err := db.open(ctx)
	if err != nil {
		return nil, err
	}
	env.pool = pool
	ci, err := cf.open(ctx, log, nil)
	if err != nil {
		env.close()
		return nil, err
	}
	env.cipher = ci
	env.store = vault.NewStore(pool, ci, log, nil)
	env.reg = runner.NewRegistry(runner.RegistryConfig{Pool: pool, Store: env.store, Buko: verifier, Logger: log})
	return env, nil
}

// operator names the person at the CLI for audit_log: cli:<user>@<host>.
func operator() string {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if name == "" {
		name = "unknown"
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "unknown"
	}
	return "cli:" + name + "@" + host
}
