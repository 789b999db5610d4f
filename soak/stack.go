package soak

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"buko.app/agentrunner/buko/sim"
)

const (
	transitMount = "transit"
	transitKey   = "agentrunner-tokens"
	namespace    = "default"
	taskQueue    = "agentrunner-soak"
	appDB        = "agentrunner"
)

// component is a replica or the worker: an agentrunner child process with a
// metrics port of its own (kept across restarts).
type component struct {
	name        string
	metricsPort int
	proc        *proc
}

func (c *component) metricsURL() string {
	return fmt.Sprintf("http://127.0.0.1:%d/metrics", c.metricsPort)
}

// stack is everything the soak runs.
type stack struct {
	cfg      Config
	dir      string
	pg       *cluster
	temporal *temporalServer
	vault    *vaultServer
	sim      *sim.Server
	simHTTP  *http.Server
	simURL   string
	control  *sim.Control
	rec      *recorder
	keysFile string
	replicas []*component
	worker   *component
	tempDBs  []string // Temporal's databases on cfg.TemporalPG, dropped at the end
}

// up starts every part and waits until each answers.
func up(ctx context.Context, cfg Config, dir string) (*stack, error) {
	s := &stack{cfg: cfg, dir: dir}
	log := cfg.Log
	ports, err := freePorts(4+cfg.Replicas, false)
	if err != nil {
		return s, err
	}
	tports, err := freePorts(14, true)
	if err != nil {
		return s, err
	}

	// The simulator, in process, behind the recorder.
	s.sim = sim.New(sim.Options{Seed: cfg.Seed})
	s.rec = newRecorder()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0]))
	if err != nil {
		return s, err
	}
	s.simHTTP = &http.Server{Handler: s.rec.wrap(s.sim), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.simHTTP.Serve(ln) }()
	s.simURL = "http://" + ln.Addr().String()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	s.control = sim.NewControl(s.simURL, sim.ControlOptions{HTTPClient: &http.Client{Timeout: 60 * time.Second, Transport: tr}})

	// Postgres of its own.
	t0 := time.Now()
	if s.pg, err = newCluster(cfg.PGBinDir, dir, ports[1]); err != nil {
		return s, err
	}
	if err := s.pg.init(ctx); err != nil {
		return s, err
	}
	if err := s.pg.start(ctx); err != nil {
		return s, err
	}
	if err := createDB(ctx, s.pg.dsn("postgres"), appDB); err != nil {
		return s, err
	}
	log.Info().Int("port", s.pg.port).Dur("took", time.Since(t0)).Msg("postgres up")

	// Temporal on SQL: its databases on the machine's Postgres, named for this run.
	t0 = time.Now()
	host, portS, err := net.SplitHostPort(cfg.TemporalPG)
	if err != nil {
		return s, fmt.Errorf("--temporal-pg %q: %w", cfg.TemporalPG, err)
	}
	pgPort, _ := strconv.Atoi(portS)
	tag := fmt.Sprintf("agentrunner_soak_%d_%d", os.Getpid(), time.Now().Unix()%100000)
	s.temporal = &temporalServer{serverBin: cfg.TemporalServerBin, sqlTool: cfg.TemporalSQLTool, schemaDir: cfg.TemporalSchemaDir,
		pgHost: host, pgPort: pgPort, db: tag, visDB: tag + "_visibility", shards: cfg.TemporalShards,
		base: tports[0], dir: filepath.Join(dir, "temporal")}
	s.tempDBs = []string{s.temporal.db, s.temporal.visDB}
	if err := s.temporal.setup(ctx); err != nil {
		return s, err
	}
	s.temporal.newProc(filepath.Join(dir, "temporal.log"))
	if err := s.startTemporal(ctx); err != nil {
		return s, err
	}
	log.Info().Str("addr", s.temporal.addr()).Int("shards", cfg.TemporalShards).Dur("took", time.Since(t0)).Msg("temporal server (SQL) up")

	// Vault with raft storage (keeps its keys across restarts).
	t0 = time.Now()
	s.vault = &vaultServer{bin: cfg.VaultBin, dir: filepath.Join(dir, "vault"), port: ports[2], clusterPort: ports[3]}
	if err := s.vault.prepare(filepath.Join(dir, "vault.log")); err != nil {
		return s, err
	}
	if err := s.vault.start(ctx, transitMount, transitKey); err != nil {
		return s, err
	}
	log.Info().Str("addr", s.vault.addr()).Dur("took", time.Since(t0)).Msg("vault up")

	// Schema and payload keys, with the binary under test.
	s.keysFile = filepath.Join(dir, "payload-keys.json")
	if err := s.runBin(ctx, "migrate", "up"); err != nil {
		return s, err
	}
	if err := s.runBin(ctx, "codec", "new-key", "--payload-keys", s.keysFile); err != nil {
		return s, err
	}

	for i := range cfg.Replicas {
		s.replicas = append(s.replicas, s.newReplica(fmt.Sprintf("replica-%d", i+1), ports[4+i]))
	}
	wport, err := freePorts(1, false)
	if err != nil {
		return s, err
	}
	s.worker = s.newWorker(wport[0])
	return s, nil
}

func (s *stack) startTemporal(ctx context.Context) error {
	if err := s.temporal.proc.start(); err != nil {
		return err
	}
	return s.temporal.waitNamespace(ctx, namespace, 3*time.Minute)
}

// env is what every agentrunner child gets.
func (s *stack) env() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AGENTRUNNER_") || strings.HasPrefix(k, "VAULT_") || strings.HasPrefix(k, "TEMPORAL_") ||
			strings.HasPrefix(k, "BUKO_") || k == "DATABASE_URL" {
			continue
		}
		out = append(out, kv)
	}
	return append(out,
		"DATABASE_URL="+s.pg.dsn(appDB),
		"BUKO_API_URL="+s.simURL,
		"AGENTRUNNER_CIPHER=transit",
		"VAULT_ADDR="+s.vault.addr(),
		"AGENTRUNNER_VAULT_TOKEN_FILE="+s.vault.tokenFile(),
		"TEMPORAL_ADDRESS="+s.temporal.addr(),
		"TEMPORAL_NAMESPACE="+namespace,
		"TEMPORAL_TASK_QUEUE="+taskQueue,
		"AGENTRUNNER_PAYLOAD_KEYS="+s.keysFile,
		"AGENTRUNNER_LOG_FORMAT=json",
		// Live sessions keep their tokens through a Vault outage (docs/soak.md).
		"AGENTRUNNER_TOKEN_CACHE_TTL=1h",
	)
}

func (s *stack) runBin(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, s.cfg.Bin, args...)
	cmd.Env = s.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("agentrunner %s: %w: %s", strings.Join(args, " "), err, lastLines(string(out), 10))
	}
	return nil
}

func (s *stack) newReplica(id string, metricsPort int) *component {
	c := &component{name: id, metricsPort: metricsPort}
	c.proc = newProc(id, filepath.Join(s.dir, id+".log"), func() *exec.Cmd {
		cmd := exec.Command(s.cfg.Bin, "serve")
		cmd.Env = append(s.env(),
			"AGENTRUNNER_RUNNER_ID="+id,
			"AGENTRUNNER_ADMIN_ADDR=127.0.0.1:0",
			fmt.Sprintf("AGENTRUNNER_METRICS_ADDR=127.0.0.1:%d", metricsPort),
			"AGENTRUNNER_WORKER=false", // the worker is its own process
			"AGENTRUNNER_LEASE_TTL="+s.cfg.LeaseTTL.String(),
			"AGENTRUNNER_DRAIN_TIMEOUT=20s",
			"AGENTRUNNER_RECONCILE_INTERVAL=5s",
		)
		return cmd
	})
	return c
}

func (s *stack) newWorker(metricsPort int) *component {
	c := &component{name: "worker", metricsPort: metricsPort}
	c.proc = newProc("worker", filepath.Join(s.dir, "worker.log"), func() *exec.Cmd {
		cmd := exec.Command(s.cfg.Bin, "worker", "--admin-addr", fmt.Sprintf("127.0.0.1:%d", metricsPort))
		cmd.Env = s.env()
		return cmd
	})
	return c
}

// components are the replicas and the worker.
func (s *stack) components() []*component {
	return append(append([]*component(nil), s.replicas...), s.worker)
}

// down stops everything and drops Temporal's databases.
func (s *stack) down() error {
	var errs []error
	for _, c := range s.components() {
		if c != nil {
			c.proc.stop(25 * time.Second)
		}
	}
	if s.temporal != nil && s.temporal.proc != nil {
		s.temporal.proc.stop(20 * time.Second)
	}
	if s.vault != nil && s.vault.proc != nil {
		s.vault.proc.stop(10 * time.Second)
	}
	if s.pg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := s.pg.stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
			// Not started, or already stopped: nothing to stop.
			if _, serr := os.Stat(filepath.Join(s.pg.dir, "postmaster.pid")); serr == nil {
				errs = append(errs, err)
			}
		}
		cancel()
	}
	if s.simHTTP != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.simHTTP.Shutdown(ctx)
		cancel()
		_ = s.simHTTP.Close()
	}
	if s.sim != nil {
		s.sim.Close()
	}
	if s.temporal != nil {
		admin := fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", s.cfg.TemporalPG)
		for _, db := range s.tempDBs {
			if err := dropDB(admin, db); err != nil {
				errs = append(errs, fmt.Errorf("drop %s: %w", db, err))
			}
		}
	}
	return errors.Join(errs...)
}
