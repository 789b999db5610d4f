package main

// agentrunner worker: the Temporal worker alone (ChatWorkflow, the agent and
// Bot API activities), and the settings serve shares with it: the Temporal
// flags, the payload keys, the worker's tuning and how it is built.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.temporal.io/sdk/client"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/agents"
	"buko.app/agentrunner/workflows/codec"
)

// temporalFlags are TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE
// and the payload key file.
type temporalFlags struct {
	address, namespace, taskQueue string
	keysFile                      string
	tls                           temporalTLSFlags
}

func (t *temporalFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&t.address, "temporal-address", "127.0.0.1:7233", "Temporal frontend host:port")
	fs.StringVar(&t.namespace, "temporal-namespace", "default", "Temporal namespace")
	fs.StringVar(&t.taskQueue, "temporal-task-queue", workflows.DefaultTaskQueue, "Temporal task queue of the chat workflows")
	fs.StringVar(&t.keysFile, "payload-keys", "", "payload key `file` of the codec that encrypts workflow payloads (default $XDG_DATA_HOME/agentrunner/payload-keys.json; create it with: agentrunner codec new-key)")
	envFlag(fs, "temporal-address", "TEMPORAL_ADDRESS")
	envFlag(fs, "temporal-namespace", "TEMPORAL_NAMESPACE")
	envFlag(fs, "temporal-task-queue", "TEMPORAL_TASK_QUEUE")
	envFlag(fs, "payload-keys", "AGENTRUNNER_PAYLOAD_KEYS")
	t.tls.bind(fs)
}

// defaultPayloadKeysPath is $XDG_DATA_HOME/agentrunner/payload-keys.json.
func defaultPayloadKeysPath() (string, error) {
	base := os.Getenv("XDG_DATA_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no payload key path: set --payload-keys or AGENTRUNNER_PAYLOAD_KEYS (%w)", err)
		}
		base = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(base, "agentrunner", "payload-keys.json"), nil
}

func (t *temporalFlags) keysPath() (string, error) {
	if t.keysFile != "" {
		return t.keysFile, nil
	}
	return defaultPayloadKeysPath()
}

// lazyUnwrapper opens the token cipher only when a wrapped key needs it.
type lazyUnwrapper struct {
	open   func(context.Context) (vault.Cipher, error)
	once   sync.Once
	cipher vault.Cipher
	err    error
}

func (l *lazyUnwrapper) Unwrap(ctx context.Context, wrapped string) ([]byte, error) {
	l.once.Do(func() { l.cipher, l.err = l.open(ctx) })
	if l.err != nil {
		return nil, l.err
	}
	return workflows.KeyUnwrapper{Cipher: l.cipher}.Unwrap(ctx, wrapped)
}

func (l *lazyUnwrapper) close() {
	if l.cipher != nil {
		_ = l.cipher.Cleanup()
	}
}

// loadKeys reads the payload key file, unwrapping keys through the cipher.
func (t *temporalFlags) loadKeys(ctx context.Context, u codec.Unwrapper) (*codec.Keyring, error) {
	path, err := t.keysPath()
	if err != nil {
		return nil, usageError{err}
	}
	kr, err := codec.LoadKeyFile(ctx, path, u)
	if errors.Is(err, os.ErrNotExist) {
		return nil, usageError{fmt.Errorf("payload key file %s does not exist: create it with `agentrunner codec new-key --payload-keys %s`", path, path)}
	}
	return kr, err
}

// dial connects to Temporal with the payload codec.
func (t *temporalFlags) dial(ctx context.Context, log zerolog.Logger, keys codec.KeyProvider, m *workflows.Metrics) (client.Client, error) {
	tlsConf, err := t.tls.config()
	if err != nil {
		return nil, usageError{err}
	}
	c, err := workflows.Dial(ctx, workflows.DialOptions{
		Address: t.address, Namespace: t.namespace, Keys: keys,
		Logger: log.With().Str("component", "temporal").Logger(), Metrics: m,
		TLS: tlsConf,
	})
	if err != nil {
		return nil, fmt.Errorf("%w (set --temporal-address or TEMPORAL_ADDRESS)", err)
	}
	return c, nil
}

// workerTuning are the worker settings serve shares with worker.
type workerTuning struct {
	maxActivities     int
	perBotConcurrency int
	botCacheTTL       time.Duration
	agentDenyPrivate  bool // agents' HTTP client refuses non-public addresses (agents.ClientOptions.DenyPrivate)
}

func (w *workerTuning) bind(fs *pflag.FlagSet) {
	fs.IntVar(&w.maxActivities, "max-concurrent-activities", 64, "activity slots of this worker")
	fs.IntVar(&w.perBotConcurrency, "per-bot-concurrency", 0, "activities of one bot running at once (fairness); 0: a quarter of the slots")
	fs.DurationVar(&w.botCacheTTL, "bot-cache-ttl", runner.DefaultBotCacheTTL, "how long a bot's agent settings are cached")
	envFlag(fs, "max-concurrent-activities", "AGENTRUNNER_MAX_CONCURRENT_ACTIVITIES")
	envFlag(fs, "per-bot-concurrency", "AGENTRUNNER_PER_BOT_CONCURRENCY")
	envFlag(fs, "bot-cache-ttl", "AGENTRUNNER_BOT_CACHE_TTL")
	fs.BoolVar(&w.agentDenyPrivate, "agent-deny-private", false, "agents' HTTP calls refuse loopback, private and link-local addresses (checked at dial time; on in the Helm chart)")
	envFlag(fs, "agent-deny-private", "AGENTRUNNER_AGENT_DENY_PRIVATE")
}

func (w *workerTuning) check() error {
	switch {
	case w.maxActivities < 1:
		return fmt.Errorf("--max-concurrent-activities %d: want at least 1", w.maxActivities)
	case w.perBotConcurrency < 0:
		return fmt.Errorf("--per-bot-concurrency %d: must not be negative (0: a quarter of the activity slots)", w.perBotConcurrency)
	case w.botCacheTTL < 0:
		return errors.New("--bot-cache-ttl must not be negative")
	}
	return nil
}

// chatWorkerDeps are what a chat worker runs on.
type chatWorkerDeps struct {
	temporal  client.Client
	taskQueue string
	pool      *pgxpool.Pool
	cipher    vault.Cipher
	tokens    workflows.Tokens
	api       *buko.Client
	log       zerolog.Logger
	metrics   *workflows.Metrics
}

// newChatWorker builds the Temporal worker of the chat workflows (not yet
// started); worker and serve both use it.
func (w *workerTuning) newChatWorker(d chatWorkerDeps) (*workflows.Worker, error) {
	return workflows.NewWorker(d.temporal, workflows.WorkerOptions{
		TaskQueue:               d.taskQueue,
		Bots:                    runner.NewDirectory(d.pool, w.botCacheTTL),
		Marks:                   runner.NewChatMarks(d.pool),
		Tokens:                  d.tokens,
		API:                     d.api,
		Secrets:                 workflows.VaultSecrets{Cipher: d.cipher},
		HTTP:                    agents.NewHTTPClient(agents.ClientOptions{DenyPrivate: w.agentDenyPrivate}),
		MaxConcurrentActivities: w.maxActivities,
		PerBotConcurrency:       w.perBotConcurrency,
		Logger:                  d.log.With().Str("component", "worker").Logger(),
		Metrics:                 d.metrics,
	})
}

// core is what serve and worker both open first: the metrics registry (with
// the Go and process collectors and the vault metrics), the Postgres pool, the
// token cipher and the token store over them.
type core struct {
	reg    *prometheus.Registry
	vm     *vault.Metrics
	pool   *pgxpool.Pool
	cipher vault.Cipher
	store  *vault.Store
}

// openCore opens the shared core; on error nothing is left open. The caller
// closes it with close.
func openCore(ctx context.Context, log zerolog.Logger, db *dbFlags, cf *cipherFlags) (*core, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	vm := vault.NewMetrics(reg)
	pool, err := db.open(ctx)
	if err != nil {
		return nil, err
	}
	ci, err := cf.open(ctx, log, vm)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &core{reg: reg, vm: vm, pool: pool, cipher: ci, store: vault.NewStore(pool, ci, log, vm)}, nil
}

// close wipes the cipher's keys, then closes the pool.
func (c *core) close() {
	_ = c.cipher.Cleanup()
	c.pool.Close()
}

// workerFlags are the settings of agentrunner worker.
type workerFlags struct {
	db            dbFlags
	cipher        cipherFlags
	buko          bukoFlags
	temporal      temporalFlags
	tuning        workerTuning
	adminAddr     string
	tokenCacheTTL time.Duration
}

func (f *workerFlags) check() error {
	if f.tokenCacheTTL < 0 {
		return errors.New("--token-cache-ttl must not be negative")
	}
	return f.tuning.check()
}

func newWorkerCmd(g *globals) *cobra.Command {
	f := &workerFlags{}
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run the Temporal worker alone: chat workflows, agents and Bot API replies",
		Long: `Run the Temporal worker without sessions: it polls the task queue for
ChatWorkflow tasks and activities, runs each bot's agent (bots.agent: echo,
http, openai) and sends the replies through the Bot API. Bot tokens are read
from secret_vault through the token cipher, per bot, in memory only; workflow
payloads are encrypted with the payload keys (agentrunner codec new-key).

The admin address serves /healthz and /metrics.`,
		Example: `  agentrunner codec new-key          # once: creates the payload key file
  agentrunner worker --temporal-address 127.0.0.1:7233 --buko-api-url http://127.0.0.1:8081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return usageError{err}
			}
			return runWorker(cmd.Context(), g.log, f)
		},
	}
	fs := cmd.Flags()
	f.db.bind(fs)
	f.cipher.bind(fs)
	f.buko.bind(fs)
	f.temporal.bind(fs)
	fs.StringVar(&f.adminAddr, "admin-addr", "127.0.0.1:8080", "address of /healthz and /metrics (empty: none)")
	f.tuning.bind(fs)
	fs.DurationVar(&f.tokenCacheTTL, "token-cache-ttl", vault.DefaultCacheTTL, "how long decrypted tokens stay in memory")
	envFlag(fs, "admin-addr", "AGENTRUNNER_ADMIN_ADDR")
	envFlag(fs, "token-cache-ttl", "AGENTRUNNER_TOKEN_CACHE_TTL")
	return cmd
}

// runWorker runs until ctx ends.
func runWorker(ctx context.Context, log zerolog.Logger, f *workerFlags) error {
	api, err := f.buko.client()
	if err != nil {
		return err
	}
	c, err := openCore(ctx, log, &f.db, &f.cipher)
	if err != nil {
		return err
	}
	defer c.close()
	reg := c.reg
	wm := workflows.NewMetrics(reg)
	keys, err := f.temporal.loadKeys(ctx, workflows.KeyUnwrapper{Cipher: c.cipher})
	if err != nil {
		return err
	}
	tc, err := f.temporal.dial(ctx, log, keys, wm)
	if err != nil {
		return err
	}
	defer tc.Close()

	w, err := f.tuning.newChatWorker(chatWorkerDeps{
		temporal: tc, taskQueue: f.temporal.taskQueue, pool: c.pool, cipher: c.cipher,
		tokens: vault.NewCache(c.store, vault.CacheOptions{TTL: f.tokenCacheTTL, Actor: "worker"}),
		api:    api, log: log, metrics: wm,
	})
	if err != nil {
		return err
	}

	if f.adminAddr != "" {
		ln, err := net.Listen("tcp", f.adminAddr)
		if err != nil {
			return fmt.Errorf("admin listener on %s: %w", f.adminAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		log.Info().Str("addr", ln.Addr().String()).Msg("worker admin endpoints listening")
	}
	log.Info().Str("task_queue", f.temporal.taskQueue).Str("namespace", f.temporal.namespace).Msg("worker running")
	return w.Run(ctx)
}
