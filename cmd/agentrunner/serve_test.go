package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"buko.app/agentrunner/runner/runnertest"
)

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
		{"temporal not wired", []string{"serve", "--handoff", "temporal"}, nil, "temporal"},
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
}

// TestServeInProcess runs serve against the simulator and a test database,
// checks the admin endpoints and that a bot goes live, then drains it by
// cancelling its context (as the first SIGTERM does).
func TestServeInProcess(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 3, "serve")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	_ = ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	out := &serveLog{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("serve output:\n%s", out.String())
		}
	})
	go func() {
		done <- serveRoot(ctx, []string{"serve", "--log-format", "json",
			"--database-url", env.DSN, "--buko-api-url", env.SimURL,
			"--cipher", "local", "--keyring", env.Keyring,
			"--runner-id", "inproc", "--admin-addr", admin, "--lease-ttl", "3s"}, out)
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		live, _ := env.Live(t, runnertest.IDs(bots))
		code, _ := get("/readyz")
		if live == len(bots) && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bots live %d/%d, readyz %d", live, len(bots), code)
		}
		select {
		case err := <-done:
			t.Fatalf("serve returned early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Fatalf("healthz: %d %s", code, body)
	}
	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, "agentrunner_runner_leases_held 128") ||
		!strings.Contains(body, "agentrunner_runner_sessions 3") {
		t.Fatalf("metrics: %d, missing leases/sessions lines", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after drain: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not drain")
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
