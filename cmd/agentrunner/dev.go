package main

// agentrunner dev: the whole system in one process on embedded defaults, for
// a developer's machine: the simulator, a persistent Temporal dev server (a
// child process), migrations on the local Postgres, the local keyring, one
// serve replica with its worker, an example agent service, and seeded demo
// bots and user. Ctrl-C stops everything.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/migrations"
	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/agents"
	"buko.app/agentrunner/workflows/codec"
)

// Dev defaults.
const (
	defaultDevTemporalPort = 7243
	devEchoHandle          = "echo_bot"
	devHTTPHandle          = "example_agent_bot"
	devUserName            = "Demo User"
	devTemporalStopGrace   = 15 * time.Second
)

// devFlags are the settings of agentrunner dev.
type devFlags struct {
	db           dbFlags
	cipher       cipherFlags
	buko         bukoFlags
	temporal     temporalFlags
	simAddr      string
	adminAddr    string
	dataDir      string
	temporalBin  string
	temporalPort int
}

// defaultDevDir is $XDG_DATA_HOME/agentrunner/dev.
func defaultDevDir() string {
	base := os.Getenv("XDG_DATA_HOME")
	if base == "" {
		if home, err := os.UserHomeDir(); err == nil {
			base = filepath.Join(home, ".local", "share")
		}
	}
	if base == "" {
		return ""
	}
	return filepath.Join(base, "agentrunner", "dev")
}

func newDevCmd(g *globals) *cobra.Command {
	f := &devFlags{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole system locally: simulator, Temporal, Postgres migrations, one replica, demo bots",
		Long: `Run everything a developer needs in one process (docs/dev.md):

  - the Buko simulator with its web chat, on --sim-addr;
  - the Temporal dev server as a child process, persistent in --data-dir
    (unless TEMPORAL_ADDRESS is set: then that server is used);
  - migrations on Postgres (DATABASE_URL; the database is created if missing);
  - the local keyring (unless VAULT_ADDR is set) and a payload key file;
  - one serve replica with its Temporal worker, admin endpoints on --admin-addr;
  - an example agent service (docs/agent-protocol.md) on a free port;
  - demo bots in the simulator, registered in the bots table: an echo bot and
    an http bot wired to the example agent, and a demo user with a private
    chat with each.

With BUKO_API_URL set, no simulator runs and nothing is seeded: register bots
with "agentrunner bots add". Ctrl-C stops everything, the child Temporal server
included.`,
		Example: `  make dev
  agentrunner dev --sim-addr 127.0.0.1:8081 --admin-addr 127.0.0.1:8080`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.dataDir == "" {
				return usageError{errors.New("--data-dir: no default (set XDG_DATA_HOME or HOME)")}
			}
			if f.temporalPort < 0 || f.temporalPort > 65535 {
				return usageError{fmt.Errorf("--temporal-port %d: want 0 to 65535", f.temporalPort)}
			}
			return runDev(cmd, g, f)
		},
	}
	fs := cmd.Flags()
	f.db.bind(fs)
	f.cipher.bind(fs)
	f.buko.bind(fs)
	f.temporal.bind(fs)
	fs.StringVar(&f.simAddr, "sim-addr", "127.0.0.1:8081", "address of the simulator (Bot API, Gateway, web chat)")
	fs.StringVar(&f.adminAddr, "admin-addr", "127.0.0.1:8080", "address of the replica's admin endpoints and status page")
	fs.StringVar(&f.dataDir, "data-dir", defaultDevDir(), "folder of the dev server's persistent state (Temporal's database, its log)")
	fs.StringVar(&f.temporalBin, "temporal-bin", "", "the temporal CLI (default: found on PATH)")
	fs.IntVar(&f.temporalPort, "temporal-port", defaultDevTemporalPort, "port of the child Temporal dev server (taken: a free one; 0: always a free one)")
	envFlag(fs, "sim-addr", "AGENTRUNNER_SIM_ADDR")
	envFlag(fs, "admin-addr", "AGENTRUNNER_ADMIN_ADDR")
	envFlag(fs, "data-dir", "AGENTRUNNER_DEV_DIR")
	envFlag(fs, "temporal-bin", "AGENTRUNNER_TEMPORAL_BIN")
	envFlag(fs, "temporal-port", "AGENTRUNNER_DEV_TEMPORAL_PORT")
	return cmd
}

func runDev(cmd *cobra.Command, g *globals, f *devFlags) error {
	ctx := cmd.Context()
	log := g.log.With().Str("component", "dev").Logger()
	out := cmd.OutOrStdout()
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("data folder: %w", err)
	}

	// Postgres: the database, then the schema.
	if err := ensureDatabase(ctx, &f.db, log); err != nil {
		return err
	}
	sqldb, err := openSQL(ctx, &f.db)
	if err != nil {
		return err
	}
	applied, err := migrations.Up(ctx, sqldb)
	_ = sqldb.Close()
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	log.Info().Int("applied", len(applied)).Str("database", redactURL(f.db.url)).Msg("schema up to date")

	// The token cipher and the payload keys.
	ci, err := f.cipher.open(ctx, log, nil)
	if err != nil {
		return err
	}
	defer func() { _ = ci.Cleanup() }()
	if err := ensurePayloadKeys(ctx, &f.temporal, ci, log); err != nil {
		return err
	}

	// Buko: the simulator in-process unless BUKO_API_URL points elsewhere.
	apiURL := f.buko.apiURL
	external := cmd.Flags().Changed("buko-api-url")
	if !external {
		ln, err := net.Listen("tcp", f.simAddr)
		if err != nil {
			return fmt.Errorf("simulator listener on %s (set --sim-addr or AGENTRUNNER_SIM_ADDR): %w", f.simAddr, err)
		}
		s := sim.New(sim.Options{Logger: g.log.With().Str("component", "sim").Logger()})
		srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer func() {
			s.Close()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		apiURL = "http://" + ln.Addr().String()
	}

	// Temporal: a persistent child dev server unless TEMPORAL_ADDRESS is set.
	if !cmd.Flags().Changed("temporal-address") {
		stop, addr, err := startDevTemporal(ctx, f, log)
		if stop != nil {
			defer stop()
		}
		if err != nil {
			return err
		}
		f.temporal.address = addr
	}

	// The example agent service.
	secret := make([]byte, 32)
	_, _ = rand.Read(secret) // crypto/rand.Read never fails on Linux
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("example agent listener: %w", err)
	}
	asrv := &http.Server{Handler: agents.ExampleService{Secret: secret}, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = asrv.Serve(aln) }()
	defer func() { _ = asrv.Close() }()
	agentURL := "http://" + aln.Addr().String() + "/agent"

	// The replica.
	sf := &serveFlags{}
	sf.bind(pflag.NewFlagSet("serve", pflag.ContinueOnError))
	sf.db, sf.cipher, sf.temporal = f.db, f.cipher, f.temporal
	sf.buko.apiURL = apiURL
	// Bound here, so the banner names the real address (--admin-addr may say port 0).
	sf.adminLn, err = net.Listen("tcp", f.adminAddr)
	if err != nil {
		return fmt.Errorf("admin listener on %s (set --admin-addr or AGENTRUNNER_ADMIN_ADDR): %w", f.adminAddr, err)
	}
	defer sf.adminLn.Close() // serve closes it too; this covers an error before serve starts
	sf.adminAddr = sf.adminLn.Addr().String()
	if sf.adminTokenFile, err = ensureAdminToken(f.dataDir, log); err != nil {
		return err
	}
	sf.runnerID = "dev-" + strconv.Itoa(os.Getpid())
	sf.drainTimeout = 10 * time.Second
	if err := sf.check(); err != nil {
		return usageError{err}
	}

	var chats []devChat
	if !external {
		chats, err = seedDev(ctx, log, f, ci, apiURL, agentURL, secret)
		if err != nil {
			return fmt.Errorf("seed demo bots: %w", err)
		}
	}
	printDevBanner(out, apiURL, sf.adminAddr, f, chats, external)
	return runServe(cmd, g, sf)
}

// adminTokenPath is where dev keeps the admin API's bearer token.
func adminTokenPath(dataDir string) string { return filepath.Join(dataDir, "admin-token") }

// ensureAdminToken makes a random admin token in a 0600 file of the data
// folder unless one is there, so dev's admin API accepts writes (pause,
// resume, reconnect, drain) from whoever can read the file. It returns the path.
func ensureAdminToken(dataDir string, log zerolog.Logger) (string, error) {
	path := adminTokenPath(dataDir)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return path, nil
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // crypto/rand.Read never fails on Linux
	tok := base64.RawURLEncoding.EncodeToString(raw) + "\n"
	if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
		return "", fmt.Errorf("admin token file: %w", err)
	}
	log.Info().Str("file", path).Msg("admin token file created")
	return path, nil
}

// ensureDatabase creates the database of d.url when it is missing. Running as
// root with no user in the URL, it falls back to the user postgres (the
// default role of a distribution's Postgres) and rewrites d.url to say so.
func ensureDatabase(ctx context.Context, d *dbFlags, log zerolog.Logger) error {
	u, err := url.Parse(d.url)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return usageError{fmt.Errorf("--database-url %q: want a postgres:// URL", redactURL(d.url))}
	}
	name := u.Path
	if len(name) > 0 && name[0] == '/' {
		name = name[1:]
	}
	if name == "" {
		return usageError{errors.New("--database-url: name a database")}
	}
	connect := func(u url.URL, db string) (*pgx.Conn, error) {
		u.Path = "/" + db
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return pgx.Connect(cctx, u.String())
	}
	admin, err := connect(*u, "postgres")
	if err != nil && u.User == nil && os.Geteuid() == 0 {
		alt := *u
		alt.User = url.User("postgres")
		if c, err2 := connect(alt, "postgres"); err2 == nil {
			log.Info().Msg("connecting to Postgres as user postgres (running as root, no user in DATABASE_URL)")
			admin, err, *u = c, nil, alt
			d.url = u.String()
		}
	}
	if err != nil {
		return fmt.Errorf("cannot connect to Postgres at %s (start it with `make services`, or set DATABASE_URL): %w", redactURL(d.url), err)
	}
	defer func() { _ = admin.Close(context.Background()) }()
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	log.Info().Str("database", name).Msg("database created")
	return nil
}

// ensurePayloadKeys creates the payload key file, wrapped by the cipher, if
// it is missing.
func ensurePayloadKeys(ctx context.Context, t *temporalFlags, ci vault.Cipher, log zerolog.Logger) error {
	path, err := t.keysPath()
	if err != nil {
		return usageError{err}
	}
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("payload key file: %w", err)
	}
	key, err := codec.GenerateKey()
	if err != nil {
		return err
	}
	wrapped, err := workflows.WrapCodecKey(ctx, ci, key)
	if err != nil {
		return fmt.Errorf("wrap the payload key: %w", err)
	}
	id := "k" + time.Now().UTC().Format("20060102T150405")
	if err := writeKeyFile(path, codec.KeyFile{Current: id, Keys: map[string]string{id: wrapped}}); err != nil {
		return fmt.Errorf("payload key file: %w", err)
	}
	log.Info().Str("file", path).Msg("payload key file created")
	return nil
}

// freePort returns want if it can be listened on at 127.0.0.1, else a free port.
func freePort(want int) (int, error) {
	if want > 0 {
		if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(want))); err == nil {
			_ = ln.Close()
			return want, nil
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// errTemporalExited means the Temporal child exited before it answered; most
// often one of the ports picked for it was taken in the meantime.
var errTemporalExited = errors.New("the Temporal dev server exited at start")

// startDevTemporal starts `temporal server start-dev` persistent in the data
// folder and waits until its default namespace answers, trying other ports
// when the child exits at start. stop (non-nil once a process started) ends it
// and waits for it.
func startDevTemporal(ctx context.Context, f *devFlags, log zerolog.Logger) (stop func(), addr string, err error) {
	for attempt := 1; ; attempt++ {
		stop, addr, err = startDevTemporalOnce(ctx, f, log)
		if err == nil || !errors.Is(err, errTemporalExited) || attempt == 3 {
			return stop, addr, err
		}
		stop()
		log.Warn().Err(err).Int("attempt", attempt).Msg("retrying the Temporal dev server on other ports")
	}
}

func startDevTemporalOnce(ctx context.Context, f *devFlags, log zerolog.Logger) (stop func(), addr string, err error) {
	bin := f.temporalBin
	if bin == "" {
		if bin, err = exec.LookPath("temporal"); err != nil {
			return nil, "", usageError{errors.New("no temporal CLI: set AGENTRUNNER_TEMPORAL_BIN (make services builds one) or TEMPORAL_ADDRESS to use a running server")}
		}
	}
	port, err := freePort(f.temporalPort)
	if err != nil {
		return nil, "", fmt.Errorf("a port for Temporal: %w", err)
	}
	httpPort, err := freePort(0)
	if err != nil {
		return nil, "", fmt.Errorf("a port for Temporal: %w", err)
	}
	metricsPort, err := freePort(0)
	if err != nil {
		return nil, "", fmt.Errorf("a port for Temporal: %w", err)
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logPath := filepath.Join(f.dataDir, "temporal.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("temporal log: %w", err)
	}
	c := exec.Command(bin, "server", "start-dev", "--headless", "--ip", "127.0.0.1",
		"--port", strconv.Itoa(port), "--http-port", strconv.Itoa(httpPort), "--metrics-port", strconv.Itoa(metricsPort),
		"--log-level", "warn",
		"--db-filename", filepath.Join(f.dataDir, "temporal.db"),
		"--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
		"--dynamic-config-value", `history.timerProcessorMaxTimeShift="100ms"`,
		"--dynamic-config-value", "history.transferProcessorMaxPollRPS=2000",
		"--dynamic-config-value", "history.timerProcessorMaxPollRPS=2000",
	)
	c.Stdout, c.Stderr = logFile, logFile
	// Its own process group (a terminal's Ctrl-C reaches only us; we stop it
	// in order), and killed by the kernel if this process dies first.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		_ = logFile.Close()
		return nil, "", fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = c.Wait(); _ = logFile.Close(); close(exited) }()
	stop = func() {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(devTemporalStopGrace):
			log.Warn().Msg("Temporal did not stop in time: killing it")
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		log.Info().Msg("Temporal dev server stopped")
	}
	log.Info().Str("addr", addr).Str("log", logPath).Msg("starting the Temporal dev server")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if temporalAnswers(ctx, addr, f.temporal.namespace) {
			log.Info().Str("addr", addr).Msg("Temporal answers")
			return stop, addr, nil
		}
		select {
		case <-exited:
			return stop, "", fmt.Errorf("%w (see %s)", errTemporalExited, logPath)
		case <-ctx.Done():
			return stop, "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return stop, "", fmt.Errorf("the Temporal dev server did not answer on %s within 2 minutes (see %s)", addr, logPath)
		}
	}
}

// temporalAnswers reports whether namespace ns is served at addr.
func temporalAnswers(ctx context.Context, addr, ns string) bool {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := client.DialContext(cctx, client.Options{HostPort: addr, Namespace: ns, Logger: workflows.NewLogger(zerolog.Nop())})
	if err != nil {
		return false
	}
	defer c.Close()
	_, err = c.WorkflowService().DescribeNamespace(cctx, &workflowservice.DescribeNamespaceRequest{Namespace: ns})
	return err == nil
}

// devChat is a seeded demo chat.
type devChat struct {
	Handle, BotID, ChatID, Agent string
}

// seedDev creates the demo bots in the simulator and registers them (a
// previous run's bots of the same handles are removed first: the simulator
// forgets everything when it stops), then the demo user and their chats.
func seedDev(ctx context.Context, log zerolog.Logger, f *devFlags, ci vault.Cipher, apiURL, agentURL string, secret []byte) ([]devChat, error) {
	pool, err := f.db.open(ctx)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	store := vault.NewStore(pool, ci, log, nil)
	reg := runner.NewRegistry(runner.RegistryConfig{Pool: pool, Store: store, Buko: buko.NewClient(apiURL, nil), Logger: log})
	sc := sim.NewControl(apiURL, sim.ControlOptions{HTTPClient: &http.Client{Timeout: 10 * time.Second}})
	defer sc.CloseIdleConnections()

	user, err := sc.CreateUser(ctx, devUserName, "")
	if err != nil {
		return nil, err
	}
	const actor = "dev"
	var chats []devChat
	for _, b := range []struct{ handle, name, agent string }{
		{devEchoHandle, "Echo", runner.AgentEcho},
		{devHTTPHandle, "Example Agent", runner.AgentHTTP},
	} {
		created, err := sc.CreateBot(ctx, sim.BotSettings{Handle: b.handle, DisplayName: b.name})
		if err != nil {
			return nil, err
		}
		tok, err := vault.ParseToken(created.Token)
		if err != nil {
			return nil, fmt.Errorf("the simulator's token for %s does not parse: %w", b.handle, err)
		}
		if old, err := reg.Get(ctx, b.handle); err == nil {
			if _, err := reg.Remove(ctx, actor, old.ID); err != nil {
				return nil, fmt.Errorf("remove the previous %s: %w", b.handle, err)
			}
		}
		req := runner.AddRequest{Actor: actor, Handle: b.handle, Agent: b.agent, Token: tok}
		if b.agent == runner.AgentHTTP {
			sealed, err := workflows.SealSecret(ctx, ci, created.BotID, string(secret))
			if err != nil {
				return nil, fmt.Errorf("seal the example agent's secret: %w", err)
			}
			if req.AgentConfig, err = json.Marshal(agents.HTTPConfig{URL: agentURL, Secret: sealed}); err != nil {
				return nil, err
			}
		}
		if _, err := reg.Add(ctx, req); err != nil {
			return nil, fmt.Errorf("register %s: %w", b.handle, err)
		}
		chat, err := sc.OpenPrivateChat(ctx, user.UserID, created.BotID)
		if err != nil {
			return nil, err
		}
		chats = append(chats, devChat{Handle: b.handle, BotID: created.BotID, ChatID: chat.ChatID, Agent: b.agent})
		log.Info().Str("bot_id", created.BotID).Str("handle", b.handle).Str("agent", b.agent).Msg("demo bot seeded")
	}
	return chats, nil
}

func printDevBanner(w io.Writer, apiURL, adminAddr string, f *devFlags, chats []devChat, external bool) {
	fmt.Fprintf(w, "\nagentrunner dev is up\n")
	if external {
		fmt.Fprintf(w, "  Buko:        %s (BUKO_API_URL; nothing seeded)\n", apiURL)
	} else {
		fmt.Fprintf(w, "  chat here:   %s/  (simulator web chat: pick %q)\n", apiURL, devUserName)
	}
	fmt.Fprintf(w, "  look here:   http://%s/  (admin: status page, /healthz, /readyz, /metrics)\n", adminAddr)
	fmt.Fprintf(w, "  admin token: %s  (page login; API: Authorization: Bearer $(cat that file))\n", adminTokenPath(f.dataDir))
	fmt.Fprintf(w, "  Temporal:    %s (namespace %s, task queue %s)\n", f.temporal.address, f.temporal.namespace, f.temporal.taskQueue)
	fmt.Fprintf(w, "  Postgres:    %s\n", redactURL(f.db.url))
	for _, c := range chats {
		fmt.Fprintf(w, "  bot @%s (%s): bot_id %s, chat %s\n", c.Handle, c.Agent, c.BotID, c.ChatID)
	}
	fmt.Fprintf(w, "Ctrl-C stops everything.\n\n")
}
