package main

// agentrunner serve: one replica of the runner (the supervisor of
// package runner), with its admin endpoints, until SIGTERM drains it.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	temporalclient "go.temporal.io/sdk/client"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/codec"
)

// Handoff implementations selectable with --handoff.
const (
	handoffPostgres = "postgres"
	handoffTemporal = "temporal"
)

// serveFlags are the settings of agentrunner serve.
type serveFlags struct {
	db                dbFlags
	cipher            cipherFlags
	buko              bukoFlags
	temporal          temporalFlags
	tuning            workerTuning
	worker            bool
	gatewayURL        string
	runnerID          string
	adminAddr         string
	adminLn           net.Listener // bound by the caller (dev) instead of adminAddr; not a flag
	metricsAddr       string
	adminTokenFile    string
	handoff           string
	leaseTTL          time.Duration
	livenessTimeout   time.Duration
	drainTimeout      time.Duration
	reconcileInterval time.Duration
	tokenCacheTTL     time.Duration
}

func defaultRunnerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "runner"
	}
	return host + "-" + strconv.Itoa(os.Getpid())
}

func (f *serveFlags) check() error {
	switch {
	case f.leaseTTL < time.Second:
		return fmt.Errorf("--lease-ttl %s: want at least 1s", f.leaseTTL)
	case f.livenessTimeout < 0:
		return fmt.Errorf("--liveness-timeout %s: want a positive duration (0: the default)", f.livenessTimeout)
	case f.drainTimeout <= 0:
		return fmt.Errorf("--drain-timeout %s: want a positive duration", f.drainTimeout)
	case f.reconcileInterval < 100*time.Millisecond:
		return fmt.Errorf("--reconcile-interval %s: want at least 100ms", f.reconcileInterval)
	case f.runnerID == "" || len(f.runnerID) > 200:
		return fmt.Errorf("--runner-id %q: want 1 to 200 characters", f.runnerID)
	case f.handoff != handoffPostgres && f.handoff != handoffTemporal:
		return fmt.Errorf("--handoff %q: want %s or %s", f.handoff, handoffPostgres, handoffTemporal)
	case f.tokenCacheTTL < 0:
		return fmt.Errorf("--token-cache-ttl %s: must not be negative", f.tokenCacheTTL)
	}
	return f.tuning.check()
}

func newServeCmd(g *globals) *cobra.Command {
	f := &serveFlags{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run one replica of the runner: shard leases, one Gateway session per owned bot",
		Long: `Run one replica of the runner. Replicas share the bots through shard leases in
Postgres (docs/ownership.md): each replica claims up to its fair share of the
shards, runs one Gateway session for every active bot of the shards it holds,
hands every update off durably before acknowledging it, and stops the sessions
of any shard whose lease it could not renew in time (self-fencing).

Bots added, paused, resumed or removed with "agentrunner bots" start or stop
within a moment (LISTEN/NOTIFY), with a periodic full pass as a safety net.

With --handoff temporal (the default) every update is signalled to its chat's
workflow in Temporal, and --worker (the default) runs the Temporal worker in
this process too (agentrunner worker is the standalone form). --handoff
postgres writes the handoffs table instead (tests and benchmarks of the
ownership layer) and runs no worker whatever --worker says.

SIGTERM (or Ctrl-C) drains: no new shards, in-flight handoffs finish, final
acks are sent, sockets close, leases are released and peers are told, so they
take the bots over at once. A second signal, or --drain-timeout, ends it hard.

The admin address serves the status page, /api/v1/*, /healthz, /readyz and
/metrics; --metrics-addr serves the last three again without auth.`,
		Example: `  agentrunner serve --database-url postgres://localhost:5432/agentrunner?sslmode=disable \
    --buko-api-url http://127.0.0.1:8081 --admin-addr 127.0.0.1:8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return usageError{err}
			}
			return runServe(cmd, g, f)
		},
	}
	f.bind(cmd.Flags())
	return cmd
}

// bind defines serve's flags on fs, each with its environment variable.
func (f *serveFlags) bind(fs *pflag.FlagSet) {
	f.db.bind(fs)
	f.cipher.bind(fs)
	f.buko.bind(fs)
	f.temporal.bind(fs)
	f.tuning.bind(fs)
	fs.BoolVar(&f.worker, "worker", true, "run the Temporal worker (chat workflows, agents, replies) in this process")
	fs.StringVar(&f.gatewayURL, "buko-gateway-url", "", "Bot Gateway WebSocket URL, ws:// or wss:// (default: derived from --buko-api-url, wss://…/bot/ws)")
	fs.StringVar(&f.runnerID, "runner-id", defaultRunnerID(), "this replica's id, unique in the fleet (default hostname-pid)")
	fs.StringVar(&f.adminAddr, "admin-addr", "127.0.0.1:8080", "address of the admin HTTP endpoints (/healthz, /readyz, /metrics)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "separate address for /healthz, /readyz and /metrics without auth (empty: on the admin address only)")
	fs.StringVar(&f.adminTokenFile, "admin-token-file", "", "file holding the admin API bearer token (none: reads open, writes refused)")
	envFlag(fs, "metrics-addr", "AGENTRUNNER_METRICS_ADDR")
	envFlag(fs, "admin-token-file", "AGENTRUNNER_ADMIN_TOKEN_FILE")
	fs.StringVar(&f.handoff, "handoff", handoffTemporal, "where updates are handed off: temporal (chat workflows) or postgres (the handoffs table; tests)")
	fs.DurationVar(&f.leaseTTL, "lease-ttl", runner.DefaultLeaseTTL, "shard lease TTL; renewed every TTL/3; the same on every replica")
	fs.DurationVar(&f.livenessTimeout, "liveness-timeout", 0, "a replica whose liveness lock is unconfirmed this long stops its sessions; peers take over a dead replica after it plus 0.5 s; the same on every replica (0: 1.5s)")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "how long a SIGTERM drain may take before sessions are closed hard")
	fs.DurationVar(&f.reconcileInterval, "reconcile-interval", runner.DefaultReconcileInterval, "period of the full reconcile pass (notifications act at once)")
	fs.DurationVar(&f.tokenCacheTTL, "token-cache-ttl", vault.DefaultCacheTTL, "how long decrypted tokens stay in memory")
	envFlag(fs, "buko-gateway-url", "BUKO_GATEWAY_URL")
	envFlag(fs, "runner-id", "AGENTRUNNER_RUNNER_ID")
	envFlag(fs, "admin-addr", "AGENTRUNNER_ADMIN_ADDR")
	envFlag(fs, "handoff", "AGENTRUNNER_HANDOFF")
	envFlag(fs, "worker", "AGENTRUNNER_WORKER")
	envFlag(fs, "lease-ttl", "AGENTRUNNER_LEASE_TTL")
	envFlag(fs, "liveness-timeout", "AGENTRUNNER_LIVENESS_TIMEOUT")
	envFlag(fs, "drain-timeout", "AGENTRUNNER_DRAIN_TIMEOUT")
	envFlag(fs, "reconcile-interval", "AGENTRUNNER_RECONCILE_INTERVAL")
	envFlag(fs, "token-cache-ttl", "AGENTRUNNER_TOKEN_CACHE_TTL")
}

func runServe(cmd *cobra.Command, g *globals, f *serveFlags) error {
	log := g.log.With().Str("runner_id", f.runnerID).Logger()
	// Signals: the first begins the drain, the second ends it hard. main's
	// context also ends on the first; that is the same request.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	defer signal.Stop(sigs)

	client, err := f.buko.client()
	if err != nil {
		return err
	}
	if client, err = client.WithGatewayURL(f.gatewayURL); err != nil {
		return usageError{fmt.Errorf("--buko-gateway-url: %w", err)}
	}

	ctx := cmd.Context()
	c, err := openCore(ctx, log, &f.db, &f.cipher)
	if err != nil {
		return err
	}
	defer c.close()
	reg, pool, ci, store := c.reg, c.pool, c.cipher, c.store
	metrics := runner.NewMetrics(reg)
	tokens := vault.NewCache(store, vault.CacheOptions{TTL: f.tokenCacheTTL, Actor: "runner:" + f.runnerID})

	adminToken := ""
	if f.adminTokenFile != "" {
		if adminToken, err = readTokenFile("--admin-token-file", f.adminTokenFile); err != nil {
			return err
		}
	}
	var ready []runner.ReadyCheck

	var handoff sessions.Handoff
	// Dead letters are sealed with the payload keys; the Postgres handoff
	// (tests) has them only when --payload-keys is given, else a dead
	// letter cannot be stored and its update is never acked.
	var deadLetters *runner.DeadLetterStore
	switch f.handoff {
	case handoffPostgres:
		// Connections of its own, as the Temporal handoff has: a burst of
		// handoffs (bots just moved here get their unacked updates again)
		// must not make the reconcile of newly claimed shards wait for a
		// connection to read their bots and tokens.
		hpool, err := pgxpool.NewWithConfig(ctx, pool.Config().Copy())
		if err != nil {
			return fmt.Errorf("handoff pool: %w", err)
		}
		defer hpool.Close()
		handoff = runner.NewPGHandoff(hpool, f.runnerID, metrics)
		var keys *codec.Keyring
		if f.temporal.keysFile != "" {
			if keys, err = f.temporal.loadKeys(ctx, workflows.KeyUnwrapper{Cipher: ci}); err != nil {
				return err
			}
		}
		deadLetters = runner.NewDeadLetterStore(pool, keys)
	case handoffTemporal:
		wm := workflows.NewMetrics(reg)
		keys, err := f.temporal.loadKeys(ctx, workflows.KeyUnwrapper{Cipher: ci})
		if err != nil {
			return err
		}
		tc, err := f.temporal.dial(ctx, log, keys, wm)
		if err != nil {
			return err
		}
		defer tc.Close()
		handoff = workflows.NewHandoff(tc, f.temporal.taskQueue).WithMetrics(wm)
		deadLetters = runner.NewDeadLetterStore(pool, keys)
		ready = append(ready, runner.ReadyCheck{Name: "temporal", Check: func(ctx context.Context) error {
			_, err := tc.CheckHealth(ctx, &temporalclient.CheckHealthRequest{})
			return err
		}})
		if f.worker {
			w, err := f.tuning.newChatWorker(chatWorkerDeps{
				temporal: tc, taskQueue: f.temporal.taskQueue, pool: pool, cipher: ci,
				tokens: tokens, api: client, log: log, metrics: wm,
			})
			if err != nil {
				return usageError{err}
			}
			if err := w.Start(); err != nil {
				return fmt.Errorf("temporal worker: %w", err)
			}
			// Stopped after the drain (deferred calls run last in, first
			// out): replies to updates handed off during the drain still go out.
			defer w.Stop()
		}
	}

	ln := f.adminLn
	if ln == nil {
		if ln, err = net.Listen("tcp", f.adminAddr); err != nil {
			return fmt.Errorf("admin listener on %s: %w", f.adminAddr, err)
		}
	}
	adminAddr := ln.Addr().String()

	sup, err := runner.NewSupervisor(runner.SupervisorConfig{
		Pool: pool, RunnerID: f.runnerID, TTL: f.leaseTTL, LivenessTimeout: f.livenessTimeout,
		Client: client, Tokens: tokens, Handoff: handoff, DeadLetters: deadLetters,
		ReconcileInterval: f.reconcileInterval,
		SessionMetrics:    sessions.NewMetrics(reg),
		Metrics:           metrics,
		Logger:            g.log,
		Version:           currentBuild().Version,
		AdminAddr:         adminAddr,
	})
	if err != nil {
		_ = ln.Close()
		return usageError{err}
	}

	adm := runner.NewAdmin(runner.AdminConfig{
		Pool: pool, Supervisor: sup, Gatherer: reg, Token: adminToken, Ready: ready, RunnerID: f.runnerID,
		Registry: runner.NewRegistry(runner.RegistryConfig{Pool: pool, Store: store, Buko: client, Logger: log}),
		Logger:   log,
	})
	admin := &http.Server{Handler: adm.Handler(), ReadHeaderTimeout: 10 * time.Second}
	adminErr := make(chan error, 2)
	go func() { adminErr <- admin.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = admin.Shutdown(sctx)
	}()
	if f.metricsAddr != "" {
		mln, err := net.Listen("tcp", f.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listener on %s: %w", f.metricsAddr, err)
		}
		ops := &http.Server{Handler: adm.OpsHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { adminErr <- ops.Serve(mln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = ops.Shutdown(sctx)
		}()
		log.Info().Str("metrics_addr", "http://"+mln.Addr().String()).Msg("health and metrics listening")
	}

	// The supervisor outlives the first signal: it keeps renewing leases
	// while the drain runs.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	runDone := make(chan error, 1)
	go func() { runDone <- sup.Run(runCtx) }()
	log.Info().Str("admin_addr", "http://"+adminAddr).Str("buko", client.BaseURL()).
		Dur("lease_ttl", f.leaseTTL).Str("handoff", f.handoff).Bool("worker", f.worker && f.handoff == handoffTemporal).
		Str("temporal", f.temporal.address).Msg("runner serving")

	signals := 0
	select {
	case err := <-runDone:
		return fmt.Errorf("supervisor stopped: %w", err)
	case err := <-adminErr:
		stopRun()
		<-runDone
		return fmt.Errorf("admin server: %w", err)
	case <-sigs:
		signals++
	case <-ctx.Done():
	}

	log.Info().Dur("timeout", f.drainTimeout).Msg("draining: a second signal ends it hard")
	start := time.Now()
	dctx, cancelDrain := context.WithTimeout(context.Background(), f.drainTimeout)
	defer cancelDrain()
	drained := make(chan error, 1)
	go func() { drained <- sup.Drain(dctx) }()
	var drainErr error
	why := "the drain ended with an error"
wait:
	for {
		select {
		case drainErr = <-drained:
			break wait
		case <-sigs:
			signals++
			if signals >= 2 {
				log.Warn().Msg("second signal: stopping hard")
				why = "a second signal ended"
				cancelDrain()
			}
		}
	}
	stopRun()
	runErr := <-runDone
	if drainErr != nil {
		if signals < 2 && errors.Is(drainErr, context.DeadlineExceeded) {
			why = fmt.Sprintf("the drain timeout (%s) ended", f.drainTimeout)
		}
		log.Warn().Err(drainErr).Dur("took", time.Since(start)).Msg("drain did not finish; sessions were closed hard")
		// Unacked updates are redelivered to the next owner: nothing is
		// lost, but the exit status says the drain was not clean.
		return fmt.Errorf("stopped hard: %s the drain: %w", why, drainErr)
	}
	log.Info().Dur("took", time.Since(start)).Msg("drained; leases released")
	return runErr
}
