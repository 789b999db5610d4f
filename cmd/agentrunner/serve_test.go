package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

// startServe runs `agentrunner serve` in-process against env (database,
// simulator, local keyring; admin on port 0, lease TTL 3 s) with extra flags,
// logging JSON to out, which the test prints if it fails. cancel is the first
// SIGTERM; done receives serve's result.
func startServe(t *testing.T, env *runnertest.Env, extra ...string) (done <-chan error, out *serveLog, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	out = &serveLog{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("serve output:\n%s", out.String())
		}
	})
	args := append([]string{"serve", "--log-format", "json",
		"--database-url", env.DSN, "--buko-api-url", env.SimURL,
		"--cipher", "local", "--keyring", env.Keyring,
		"--admin-addr", "127.0.0.1:0", "--lease-ttl", "3s"}, extra...)
	go func() { ch <- serveRoot(ctx, args, out) }()
	return ch, out, cancel
}

// serveRoot runs the root command with args and returns its error.
func serveRoot(ctx context.Context, args []string, out io.Writer) error {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(out)
	return root.ExecuteContext(ctx)
}

func TestServeRejectsBadSettings(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"short ttl", []string{"serve", "--lease-ttl", "500ms"}, nil, "--lease-ttl"},
		{"ttl from env", []string{"serve"}, map[string]string{"AGENTRUNNER_LEASE_TTL": "10ms"}, "--lease-ttl"},
		{"bad ttl env", []string{"serve"}, map[string]string{"AGENTRUNNER_LEASE_TTL": "soon"}, "AGENTRUNNER_LEASE_TTL"},
		{"handoff", []string{"serve", "--handoff", "kafka"}, nil, "--handoff"},
		{"handoff from env", []string{"serve"}, map[string]string{"AGENTRUNNER_HANDOFF": "kafka"}, "--handoff"},
		{"drain", []string{"serve", "--drain-timeout", "0s"}, nil, "--drain-timeout"},
		{"runner id", []string{"serve", "--runner-id", ""}, nil, "--runner-id"},
		{"reconcile", []string{"serve", "--reconcile-interval", "1ms"}, nil, "--reconcile-interval"},
		{"activities", []string{"serve", "--max-concurrent-activities", "0"}, nil, "--max-concurrent-activities"},
		{"gateway url", []string{"serve", "--buko-gateway-url", "http://127.0.0.1:1/bot/ws"}, nil, "--buko-gateway-url"},
		{"gateway url from env", []string{"serve"}, map[string]string{"BUKO_GATEWAY_URL": "ftp://x"}, "--buko-gateway-url"},
		{"worker env", []string{"serve"}, map[string]string{"AGENTRUNNER_WORKER": "maybe"}, "AGENTRUNNER_WORKER"},
		{"buko url", []string{"serve", "--buko-api-url", "ftp://x"}, nil, "--buko-api-url"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var out bytes.Buffer
			err := serveRoot(context.Background(), c.args, &out)
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want a usage error naming %s", err, c.want)
			}
		})
	}
}

func TestServeFlagsHaveEnvironmentVariables(t *testing.T) {
	cmd := newServeCmd(&globals{})
	for flag, env := range map[string]string{
		"database-url": "DATABASE_URL", "buko-api-url": "BUKO_API_URL", "buko-gateway-url": "BUKO_GATEWAY_URL",
		"runner-id": "AGENTRUNNER_RUNNER_ID", "lease-ttl": "AGENTRUNNER_LEASE_TTL",
		"drain-timeout": "AGENTRUNNER_DRAIN_TIMEOUT", "admin-addr": "AGENTRUNNER_ADMIN_ADDR",
		"cipher": "AGENTRUNNER_CIPHER", "keyring": "AGENTRUNNER_KEYRING", "vault-addr": "VAULT_ADDR",
		"transit-mount": "AGENTRUNNER_TRANSIT_MOUNT", "transit-key": "AGENTRUNNER_TRANSIT_KEY",
		"handoff": "AGENTRUNNER_HANDOFF", "worker": "AGENTRUNNER_WORKER", "temporal-address": "TEMPORAL_ADDRESS",
		"temporal-task-queue": "TEMPORAL_TASK_QUEUE", "payload-keys": "AGENTRUNNER_PAYLOAD_KEYS",
	} {
		fl := cmd.Flags().Lookup(flag)
		if fl == nil {
			t.Errorf("no --%s", flag)
			continue
		}
		if got := fl.Annotations[envAnnotation]; len(got) != 1 || got[0] != env {
			t.Errorf("--%s: env %v, want %s", flag, got, env)
		}
	}
	if def := cmd.Flags().Lookup("lease-ttl").DefValue; def != "15s" {
		t.Errorf("--lease-ttl default %s, want 15s", def)
	}
	if def := cmd.Flags().Lookup("drain-timeout").DefValue; def != "30s" {
		t.Errorf("--drain-timeout default %s, want 30s", def)
	}
	if def := cmd.Flags().Lookup("handoff").DefValue; def != handoffTemporal {
		t.Errorf("--handoff default %s, want temporal", def)
	}
	if def := cmd.Flags().Lookup("worker").DefValue; def != "true" {
		t.Errorf("--worker default %s, want true", def)
	}
}

// TestServeInProcess runs serve against the simulator and a test database,
// checks the admin endpoints and that a bot goes live, then drains it by
// cancelling its context (as the first SIGTERM does).
func TestServeInProcess(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 3, "serve")
	done, out, cancel := startServe(t, env, "--runner-id", "inproc", "--handoff", "postgres")
	defer cancel()
	// serve binds port 0 and logs the address it got.
	adminRE := regexp.MustCompile(`"admin_addr":"http://(127\.0\.0\.1:\d+)"`)
	admin := ""
	get := func(path string) (int, string) {
		if admin == "" {
			m := adminRE.FindStringSubmatch(out.String())
			if m == nil {
				return 0, "serve has not logged its admin address yet"
			}
			admin = m[1]
		}
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testsupport.Until(t, "every bot live and readyz 200", 60*time.Second, func() (bool, string) {
		select {
		case err := <-done:
			t.Fatalf("serve returned early: %v", err)
		default:
		}
		live, _ := env.Live(t, runnertest.IDs(bots))
		code, _ := get("/readyz")
		return live == len(bots) && code == http.StatusOK, fmt.Sprintf("bots live %d/%d, readyz %d", live, len(bots), code)
	})
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Fatalf("healthz: %d %s", code, body)
	}
	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, "agentrunner_runner_leases_held 128") ||
		!strings.Contains(body, "agentrunner_runner_sessions 3") {
		t.Fatalf("metrics: %d, missing leases/sessions lines", code)
	}
	cancel()
	if err := testsupport.ReceiveWithin(t, "serve to drain", 60*time.Second, done); err != nil {
		t.Fatalf("serve after drain: %v", err)
	}
	if live, _ := env.Live(t, runnertest.IDs(bots)); live != 0 {
		t.Fatalf("%d bots still connected after the drain", live)
	}
	var owned int
	if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM shard_leases WHERE owner IS NOT NULL`).Scan(&owned); err != nil {
		t.Fatal(err)
	}
	if owned != 0 {
		t.Fatalf("%d leases still owned after the drain", owned)
	}
}

// serveLog collects a command's output from several goroutines.
type serveLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *serveLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *serveLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestServeTemporalEndToEnd runs serve with its defaults, the Temporal
// handoff and the in-process worker, against the simulator, a test database
// and the Temporal dev server: a user's message gets the echo bot's reply in
// the simulator's transcript. The Gateway URL is given explicitly
// (BUKO_GATEWAY_URL), as for a separate Gateway host.
func TestServeTemporalEndToEnd(t *testing.T) {
	addr := needTemporal(t)
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 1, "serve_tmprl")
	keys := filepath.Join(t.TempDir(), "payload-keys.json")
	if err := serveRoot(context.Background(), []string{"codec", "new-key", "--raw", "--id", "k1", "--payload-keys", keys, "--log-format", "json"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BUKO_GATEWAY_URL", "ws"+strings.TrimPrefix(env.SimURL, "http")+"/bot/ws")

	done, out, cancel := startServe(t, env, "--runner-id", "tmprl",
		"--temporal-address", addr, "--temporal-task-queue", fmt.Sprintf("serve-e2e-%d", time.Now().UnixNano()),
		"--payload-keys", keys)
	defer cancel()

	testsupport.Within(t, "the bot to go live", 90*time.Second, whileServing(t, done, "the bot to go live", func() bool {
		live, _ := env.Live(t, runnertest.IDs(bots))
		return live == 1
	}))
	start := time.Now()
	env.Send(t, bots[0], "hello through temporal")
	testsupport.Within(t, "the echo reply", 90*time.Second, whileServing(t, done, "the echo reply", func() bool {
		msgs, err := env.Control.Transcript(context.Background(), bots[0].ChatID, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.FromKind == "bot" && m.FromID == bots[0].ID && m.Text == "hello through temporal" {
				return true
			}
		}
		return false
	}))
	t.Logf("echo reply after %s", time.Since(start).Round(time.Millisecond))
	if strings.Contains(out.String(), "hello through temporal") {
		t.Error("the user's text is in serve's log")
	}

	cancel()
	if err := testsupport.ReceiveWithin(t, "serve to drain", 60*time.Second, done); err != nil {
		t.Fatalf("serve after drain: %v", err)
	}
}

// whileServing is cond, failing t at once if serve has returned (done).
func whileServing(t *testing.T, done <-chan error, what string, cond func() bool) func() bool {
	return func() bool {
		select {
		case err := <-done:
			t.Fatalf("serve returned while waiting for %s: %v", what, err)
		default:
		}
		return cond()
	}
}
