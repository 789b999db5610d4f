package soak

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
)

func TestMain(m *testing.M) { testsupport.Main(m) }

// shortConfig is the soak's short form for `make test`: every fault, on a
// smaller fleet (50 bots, 200 chats, 2 messages a second) so that it fits in
// a few minutes on this machine.
func shortConfig(t *testing.T) Config {
	t.Helper()
	how := "run make services, then source ~/.cache/agentrunner/run/services.env"
	cfg := Config{
		TemporalServerBin: testsupport.Getenv(t, "Temporal server", "AGENTRUNNER_TEMPORAL_SERVER_BIN", how),
		TemporalSQLTool:   testsupport.Getenv(t, "Temporal server", "AGENTRUNNER_TEMPORAL_SQL_TOOL_BIN", how),
		TemporalSchemaDir: testsupport.Getenv(t, "Temporal server", "AGENTRUNNER_TEMPORAL_SCHEMA_DIR", how),
		VaultBin:          testsupport.Getenv(t, "Vault", "AGENTRUNNER_VAULT_BIN", how),
		Duration:          100 * time.Second, Bots: 50, Chats: 200, Groups: 0.25, Rate: 2, Seed: 7,
		Quiet: 10 * time.Second, ChaosWindow: 5 * time.Second, VaultOutage: 30 * time.Second,
		RecoveryLimit: 2 * time.Minute, StartLimit: 5 * time.Minute, LeaseTTL: 6 * time.Second,
	}
	if _, err := os.Stat(filepath.Join(Defaults().PGBinDir, "initdb")); err != nil {
		testsupport.Unavailable(t, "Postgres", "no initdb: "+err.Error(), "apt-get install postgresql")
	}
	return cfg
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agentrunner")
	out, err := exec.Command("go", "build", "-o", bin, "buko.app/agentrunner/cmd/agentrunner").CombinedOutput()
	if err != nil {
		t.Fatalf("build agentrunner: %v\n%s", err, out)
	}
	return bin
}

// TestSoakShort runs every fault under traffic and fails on any invariant.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak takes minutes")
	}
	cfg := shortConfig(t)
	// Injected lost responses make ambiguous sends by design; in a run of a
	// few hundred messages a single one is already over the 0.1 % bound, so
	// the short form leaves that fault to the long form (docs/soak.md).
	cfg.Faults = slices.DeleteFunc(FaultNames(), func(f string) bool { return f == FaultSimLostResponse })
	cfg.Bin = buildBinary(t)
	var logBuf bytes.Buffer
	cfg.Log = zerolog.New(&logBuf).With().Timestamp().Logger()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	rep, err := Run(ctx, cfg)
	if rep != nil {
		var tb bytes.Buffer
		_ = rep.WriteTable(&tb)
		t.Logf("soak report (%s):\n%s", time.Since(start).Round(time.Second), tb.String())
	}
	if err != nil {
		t.Logf("soak events:\n%s", logBuf.String())
		t.Fatal(err)
	}
	if !rep.Passed {
		t.Logf("soak events:\n%s", logBuf.String())
		t.Fatal("an invariant failed")
	}
	if len(rep.Faults) != len(cfg.Faults) {
		t.Fatalf("%d faults injected, want %d", len(rep.Faults), len(cfg.Faults))
	}
}

// TestConfigRefusesBadSettings: a setting that cannot run is refused with its name.
func TestConfigRefusesBadSettings(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"--rate":         func(c *Config) { c.Rate = 1000 },
		"--chats":        func(c *Config) { c.Chats = 10 },
		"--groups":       func(c *Config) { c.Groups = 2 },
		"--vault-outage": func(c *Config) { c.VaultOutage = 5 * time.Second },
		"unknown fault":  func(c *Config) { c.Faults = []string{"meteor"} },
		"--duration":     func(c *Config) { c.Duration = time.Second },
	} {
		c := Defaults()
		c.Bin = "/bin/true"
		c.fill()
		mut(&c)
		err := c.check()
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(name)) {
			t.Errorf("%s: error %v does not name it", name, err)
		}
	}
}

// TestScheduleIsSeeded: the same seed gives the same order, with every fault once.
func TestScheduleIsSeeded(t *testing.T) {
	a, b, c := schedule(FaultNames(), 3), schedule(FaultNames(), 3), schedule(FaultNames(), 4)
	if len(a) != len(FaultNames()) {
		t.Fatalf("schedule has %d faults", len(a))
	}
	same := true
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("seed 3 gave %v then %v", a, b)
		}
		same = same && a[i] == c[i]
	}
	if same {
		t.Errorf("seeds 3 and 4 gave the same order %v", a)
	}
}

// TestWindowHitFindsTokenSecrets: the leak scan finds a secret as text and as hex.
func TestWindowHitFindsTokenSecrets(t *testing.T) {
	set := map[string]bool{"abcdefghijklmnop": true}
	if !windowHit([]byte("xx abcdefghijklmnopq yy"), set, tokenWindow) {
		t.Error("plain secret not found")
	}
	if windowHit([]byte("xx abcdefghijklmnoX yy"), set, tokenWindow) {
		t.Error("a near miss was found")
	}
}
