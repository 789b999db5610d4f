package vault

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/migrations/pgtest"
)

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func testPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	dsn := pgtest.New(t)
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// insertBots adds minimal bots rows so that secret_vault rows may reference them.
func insertBots(t testing.TB, db DB, ids []string) {
	t.Helper()
	_, err := db.Exec(testCtx(t), `INSERT INTO bots (id, handle, shard) SELECT b, 'h_' || b, 0 FROM unnest($1::text[]) AS b`, ids)
	if err != nil {
		t.Fatal(err)
	}
}

// countingTransport counts HTTP requests, to check how many calls a batch takes.
type countingTransport struct {
	next  http.RoundTripper
	calls atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.calls.Add(1)
	return c.next.RoundTrip(r)
}

func (c *countingTransport) wrap(next http.RoundTripper) http.RoundTripper {
	c.next = next
	return c
}

// vaultEnv returns the shared dev server's address and root token.
func vaultEnv(t testing.TB) (addr, token string) {
	t.Helper()
	addr, token = os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN")
	if addr == "" || token == "" {
		testsupport.Unavailable(t, "Vault", "VAULT_ADDR or VAULT_TOKEN is not set", testsupport.ServicesHint)
	}
	return addr, token
}

// rootClient is a plain Vault client with the root token, for test setup.
func rootClient(t testing.TB, addr, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

type transitOpt func(*TransitConfig)

// newTestTransit provisions a Transit cipher on the shared server with a key
// of its own (created derived), so tests are isolated.
func newTestTransit(t testing.TB, opts ...transitOpt) (*Transit, *countingTransport) {
	t.Helper()
	addr, token := vaultEnv(t)
	return transitOn(t, addr, token, "test-"+testsupport.RandHex(6), opts...)
}

func transitOn(t testing.TB, addr, token, key string, opts ...transitOpt) (*Transit, *countingTransport) {
	t.Helper()
	ctx := testCtx(t)
	ensureTransitMount(t, rootClient(t, addr, token))
	if _, err := rootClient(t, addr, token).Logical().WriteWithContext(ctx, "transit/keys/"+key, map[string]any{"derived": true}); err != nil {
		t.Fatalf("create transit key: %v", err)
	}
	ct := &countingTransport{}
	tokFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := TransitConfig{Address: addr, Key: key, TokenFile: tokFile, WrapTransport: ct.wrap}
	for _, o := range opts {
		o(&cfg)
	}
	tr := NewTransit(cfg, zerolog.Nop(), nil)
	if err := tr.Provision(ctx); err != nil {
		t.Fatalf("provision transit: %v", err)
	}
	if err := tr.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Cleanup() })
	return tr, ct
}

func ensureTransitMount(t testing.TB, c *api.Client) {
	t.Helper()
	mounts, err := c.Sys().ListMounts()
	if err != nil {
		t.Fatalf("list mounts: %v", err)
	}
	if _, ok := mounts["transit/"]; ok {
		return
	}
	if err := c.Sys().Mount("transit", &api.MountInput{Type: "transit"}); err != nil {
		t.Fatalf("mount transit: %v", err)
	}
}

func newTestLocal(t testing.TB) *Local {
	t.Helper()
	l := NewLocal(filepath.Join(t.TempDir(), "agentrunner", "keyring"), nil)
	if err := l.Provision(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Cleanup() })
	return l
}

// vaultBinary is the Vault binary built by deploy/dev/vault.sh.
func vaultBinary(t testing.TB) string {
	t.Helper()
	p := os.Getenv("AGENTRUNNER_VAULT_BIN")
	if p == "" {
		home, _ := os.UserHomeDir()
		p = filepath.Join(home, ".cache", "agentrunner", "tools", "vault-1.21.4", "vault")
	}
	_, err := os.Stat(p)
	testsupport.Require(t, "the Vault binary", err, "build it with `deploy/dev/vault.sh build` (or `make services`)")
	return p
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startVault runs a dedicated dev server (for tests that seal or stop it) and
// returns its address and root token; it is killed at cleanup.
func startVault(t testing.TB) (addr, token string, stop func()) {
	t.Helper()
	bin := vaultBinary(t)
	token = "root-" + testsupport.RandHex(12)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := freePort(t)
		addr = fmt.Sprintf("http://127.0.0.1:%d", port)
		logf, err := os.Create(filepath.Join(t.TempDir(), "vault.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "server", "-dev", "-dev-no-store-token", "-dev-root-token-id="+token,
			fmt.Sprintf("-dev-listen-address=127.0.0.1:%d", port))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start vault: %v", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited); logf.Close() }()
		stopped := false
		stop = func() {
			if stopped {
				return
			}
			stopped = true
			_ = cmd.Process.Kill()
			<-exited
		}
		t.Cleanup(stop)
		c := rootClient(t, addr, token)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			select {
			case <-exited:
				lastErr = fmt.Errorf("vault exited early (port %d taken?)", port)
			default:
			}
			if lastErr != nil {
				break
			}
			if h, err := c.Sys().Health(); err == nil && h.Initialized && !h.Sealed {
				ensureTransitMount(t, c)
				return addr, token, stop
			}
			time.Sleep(50 * time.Millisecond) // readiness poll tied to the exit check and port retry above; bounded by deadline
		}
		if lastErr == nil {
			stop()
			t.Fatalf("vault on %s did not become ready within 60 s", addr)
		}
	}
	t.Fatalf("could not start vault: %v", lastErr)
	return "", "", nil
}
