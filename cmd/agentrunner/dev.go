package main

// agentrunner dev: the whole system in one process on embedded defaults, for
// a developer's machine: the simulator, a persistent Temporal dev server (a
// child process), migrations on the local Postgres, the local keyring, one
// serve replica with its worker, an example agent service, and seeded demo
// bots and user. Ctrl-C stops everything. The parts are package devstack's;
// this file is the flags and the order they start in.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"buko.app/agentrunner/devstack"
	"buko.app/agentrunner/migrations"
	"buko.app/agentrunner/vault"
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
	fs.StringVar(&f.dataDir, "data-dir", devstack.DefaultDir(), "folder of the dev server's persistent state (Temporal's database, its log)")
	fs.StringVar(&f.temporalBin, "temporal-bin", "", "the temporal CLI (default: found on PATH)")
	fs.IntVar(&f.temporalPort, "temporal-port", devstack.DefaultTemporalPort, "port of the child Temporal dev server (taken: a free one; 0: always a free one)")
	envFlag(fs, "sim-addr", "AGENTRUNNER_SIM_ADDR")
	envFlag(fs, "admin-addr", "AGENTRUNNER_ADMIN_ADDR")
	envFlag(fs, "data-dir", "AGENTRUNNER_DEV_DIR")
	envFlag(fs, "temporal-bin", "AGENTRUNNER_TEMPORAL_BIN")
	envFlag(fs, "temporal-port", "AGENTRUNNER_DEV_TEMPORAL_PORT")
	return cmd
}

// runDev starts the stack in order, each part stopped (in reverse) when
// the replica's serve returns.
func runDev(cmd *cobra.Command, g *globals, f *devFlags) error {
	ctx := cmd.Context()
	log := g.log.With().Str("component", "dev").Logger()
	var stops []func()
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("data folder: %w", err)
	}
	if err := devDatabase(ctx, &f.db, log); err != nil {
		return devError(err)
	}
	ci, err := devCipher(ctx, f, log)
	if err != nil {
		return devError(err)
	}
	stops = append(stops, func() { _ = ci.Cleanup() })

	// Buko: the simulator in-process unless BUKO_API_URL points elsewhere.
	apiURL, external := f.buko.apiURL, cmd.Flags().Changed("buko-api-url")
	if !external {
		url, stop, err := devstack.StartSimulator(f.simAddr, g.log.With().Str("component", "sim").Logger())
		if err != nil {
			return err
		}
		apiURL, stops = url, append(stops, stop)
	}
	// Temporal: a persistent child dev server unless TEMPORAL_ADDRESS is set.
	if !cmd.Flags().Changed("temporal-address") {
		t := devstack.Temporal{Bin: f.temporalBin, Port: f.temporalPort, DataDir: f.dataDir, Namespace: f.temporal.namespace}
		stop, addr, err := t.Start(ctx, log)
		if stop != nil {
			stops = append(stops, stop)
		}
		if err != nil {
			return devError(err)
		}
		f.temporal.address = addr
	}
	agent, err := devstack.StartExampleAgent()
	if err != nil {
		return err
	}
	stops = append(stops, agent.Close)

	sf, err := devReplica(f, apiURL, log)
	if sf != nil && sf.adminLn != nil {
		stops = append(stops, func() { _ = sf.adminLn.Close() }) // serve closes it too; this covers an error before serve starts
	}
	if err != nil {
		return err
	}
	var chats []devstack.Chat
	if !external {
		if chats, err = devSeed(ctx, f, ci, apiURL, agent, log); err != nil {
			return fmt.Errorf("seed demo bots: %w", err)
		}
	}
	devstack.Banner{
		APIURL: apiURL, External: external, AdminAddr: sf.adminAddr, AdminTokenFile: sf.adminTokenFile,
		TemporalAddr: f.temporal.address, Namespace: f.temporal.namespace, TaskQueue: f.temporal.taskQueue,
		Database: redactURL(f.db.url), Chats: chats,
	}.Write(cmd.OutOrStdout())
	return runServe(cmd, g, sf)
}

// devError makes a devstack.SettingError a usage error (exit status 2).
func devError(err error) error {
	var se *devstack.SettingError
	if errors.As(err, &se) {
		return usageError{err}
	}
	return err
}

// devDatabase makes the database (if missing) and brings its schema up to date.
func devDatabase(ctx context.Context, db *dbFlags, log zerolog.Logger) error {
	u, err := devstack.EnsureDatabase(ctx, db.url, log)
	if err != nil {
		return err
	}
	db.url = u
	sqldb, err := openSQL(ctx, db)
	if err != nil {
		return err
	}
	applied, err := migrations.Up(ctx, sqldb)
	_ = sqldb.Close()
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	log.Info().Int("applied", len(applied)).Str("database", redactURL(db.url)).Msg("schema up to date")
	return nil
}

// devCipher opens the token cipher and makes the payload key file if it is
// missing; the caller Cleanups the cipher.
func devCipher(ctx context.Context, f *devFlags, log zerolog.Logger) (vault.Cipher, error) {
	ci, err := f.cipher.open(ctx, log, nil)
	if err != nil {
		return nil, err
	}
	path, err := f.temporal.keysPath()
	if err == nil {
		err = devstack.EnsurePayloadKeys(ctx, path, ci, log)
	} else {
		err = usageError{err}
	}
	if err != nil {
		_ = ci.Cleanup()
		return nil, err
	}
	return ci, nil
}

// devReplica is the serve replica's settings: dev's database, cipher and
// Temporal, Buko at apiURL, the admin listener bound here (so the banner
// names the real address; --admin-addr may say port 0) and dev's admin
// token. Once the listener is bound it is in the result, also with an error.
func devReplica(f *devFlags, apiURL string, log zerolog.Logger) (*serveFlags, error) {
	sf := &serveFlags{}
	sf.bind(pflag.NewFlagSet("serve", pflag.ContinueOnError))
	sf.db, sf.cipher, sf.temporal = f.db, f.cipher, f.temporal
	sf.buko.apiURL = apiURL
	var err error
	sf.adminLn, err = net.Listen("tcp", f.adminAddr)
	if err != nil {
		return nil, fmt.Errorf("admin listener on %s (set --admin-addr or AGENTRUNNER_ADMIN_ADDR): %w", f.adminAddr, err)
	}
	sf.adminAddr = sf.adminLn.Addr().String()
	if sf.adminTokenFile, err = devstack.EnsureAdminToken(f.dataDir, log); err != nil {
		return sf, err
	}
	sf.runnerID = "dev-" + strconv.Itoa(os.Getpid())
	sf.drainTimeout = 10 * time.Second
	if err := sf.check(); err != nil {
		return sf, usageError{err}
	}
	return sf, nil
}

// devSeed registers the demo bots, user and chats.
func devSeed(ctx context.Context, f *devFlags, ci vault.Cipher, apiURL string, agent *devstack.ExampleAgent, log zerolog.Logger) ([]devstack.Chat, error) {
	pool, err := f.db.open(ctx)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	return devstack.Seed{Pool: pool, Cipher: ci, APIURL: apiURL, Agent: agent, Log: log}.Run(ctx)
}
