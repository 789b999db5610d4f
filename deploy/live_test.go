package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

// The rules and the dashboard against a running system: a real Prometheus
// (Debian's package) scrapes two `agentrunner serve` replicas, evaluates the
// chart's recording and alert rules, and answers every dashboard query.
//
// The rules are loaded from a copy of deploy/prometheus/agentrunner.rules.yaml
// whose `for:` durations are all rewritten to liveFor, and Prometheus scrapes
// and evaluates every second: the test waits seconds, not the production
// 5–30 minutes. The expressions themselves are unchanged.

const liveFor = "3s"

var forLine = regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`)

// shortenFor rewrites every `for:` of a rules file to d.
func shortenFor(rules []byte, d string) ([]byte, int) {
	n := len(forLine.FindAll(rules, -1))
	return forLine.ReplaceAll(rules, []byte("${1}"+d)), n
}

func TestShortenFor(t *testing.T) {
	in := "      - alert: A\n        expr: x > 0\n        for: 15m\n        labels: {}\n      - alert: B\n        expr: 'for: 1m'\n"
	out, n := shortenFor([]byte(in), "3s")
	if n != 1 || !strings.Contains(string(out), "        for: 3s\n") || !strings.Contains(string(out), "'for: 1m'") {
		t.Fatalf("shortenFor = %d, %q", n, out)
	}
}

// buildBinary builds cmd/agentrunner into a temporary folder.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agentrunner")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "buko.app/agentrunner/cmd/agentrunner")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// liveReplica is one `agentrunner serve` process.
type liveReplica struct {
	id, metrics string
	cmd         *exec.Cmd
	log         *bytes.Buffer
	done        chan struct{}
}

func startReplica(t *testing.T, bin, id string, env []string) *liveReplica {
	t.Helper()
	r := &liveReplica{id: id, metrics: freeAddr(t), log: &bytes.Buffer{}, done: make(chan struct{})}
	r.cmd = exec.Command(bin, "serve")
	r.cmd.Env = append(env, "AGENTRUNNER_RUNNER_ID="+id, "AGENTRUNNER_METRICS_ADDR="+r.metrics)
	var mu sync.Mutex
	w := &lockedWriter{mu: &mu, w: r.log}
	r.cmd.Stdout, r.cmd.Stderr = w, w
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		<-r.done
		if t.Failed() {
			mu.Lock()
			t.Logf("replica %s log (tail):\n%s", id, tail(r.log.String(), 4000))
			mu.Unlock()
		}
	})
	return r
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// replicaEnv is the environment minus settings that would steer a replica elsewhere.
func replicaEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AGENTRUNNER_") || strings.HasPrefix(k, "VAULT_") ||
			strings.HasPrefix(k, "BUKO_") || strings.HasPrefix(k, "TEMPORAL_") || k == "DATABASE_URL" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// prom is a Prometheus server started by the test.
type prom struct{ base string }

func startPrometheus(t *testing.T, targets []string) *prom {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	testsupport.Require(t, "prometheus", err, "run `bash deploy/dev/promtool.sh` (make services does): Debian's prometheus package")
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join("prometheus", "agentrunner.rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rules, n := shortenFor(raw, liveFor)
	if n == 0 {
		t.Fatal("the rules file has no `for:` to shorten (did its layout change?)")
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), rules, 0o600); err != nil {
		t.Fatal(err)
	}
	quoted := make([]string, len(targets))
	for i, a := range targets {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: agentrunner
    static_configs:
      - targets: [%s]
`, filepath.Join(dir, "rules.yaml"), strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	var log bytes.Buffer
	var mu sync.Mutex
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr,
		"--log.level=warn")
	cmd.Stdout, cmd.Stderr = &lockedWriter{&mu, &log}, &lockedWriter{&mu, &log}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			mu.Lock()
			t.Logf("prometheus log (tail):\n%s", tail(log.String(), 3000))
			mu.Unlock()
		}
	})
	p := &prom{base: "http://" + addr}
	testsupport.Within(t, "Prometheus ready", time.Minute, func() bool {
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// query runs an instant query; it returns the number of series (1 for a scalar).
func (p *prom) query(expr string) (int, error) {
	resp, err := http.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out struct {
		Status, Error string
		Data          struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, err
	}
	if out.Status != "success" {
		return 0, fmt.Errorf("%s", out.Error)
	}
	if out.Data.ResultType == "scalar" || out.Data.ResultType == "string" {
		return 1, nil
	}
	var series []json.RawMessage
	if err := json.Unmarshal(out.Data.Result, &series); err != nil {
		return 0, err
	}
	return len(series), nil
}

type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (p *prom) alerts(t *testing.T) []promAlert {
	t.Helper()
	resp, err := http.Get(p.base + "/api/v1/alerts")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Data struct {
			Alerts []promAlert `json:"alerts"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out.Data.Alerts
}

// state is the state of alertname ("" when inactive), its instance label matching
// instance when that is not "".
func (p *prom) state(t *testing.T, alertname, instance string) string {
	t.Helper()
	st := ""
	for _, a := range p.alerts(t) {
		if a.Labels["alertname"] != alertname || (instance != "" && a.Labels["instance"] != instance) {
			continue
		}
		if a.State == "firing" || st == "" {
			st = a.State
		}
	}
	return st
}

// waitFiring waits until alertname fires; fault is when the fault was caused.
func (p *prom) waitFiring(t *testing.T, fault time.Time, alertname, instance string, d time.Duration) {
	t.Helper()
	testsupport.Until(t, alertname+" firing", d, func() (bool, string) {
		st := p.state(t, alertname, instance)
		return st == "firing", "state " + fmt.Sprintf("%q", st)
	})
	t.Logf("%s firing %s after the fault", alertname, time.Since(fault).Round(100*time.Millisecond))
}

// dashboardQueries returns the dashboard's queries with Grafana's variables
// replaced by what Grafana would send at a 1 s scrape interval.
func dashboardQueries(t *testing.T) map[string]string {
	t.Helper()
	d, _ := readDashboard(t)
	out := map[string]string{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				continue
			}
			expr := strings.ReplaceAll(tg.Expr, "$__rate_interval", "1m")
			out[p.Title+" / "+tg.RefID] = expr
		}
	}
	return out
}

func TestRulesAndDashboardLive(t *testing.T) {
	temporal := testsupport.Getenv(t, "Temporal", "TEMPORAL_ADDRESS", testsupport.ServicesHint)
	if _, err := exec.LookPath("prometheus"); err != nil {
		testsupport.Unavailable(t, "prometheus", err.Error(), "run `bash deploy/dev/promtool.sh` (make services does)")
	}
	bin := buildBinary(t)
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 4, "live")
	// The replicas reach the simulator through a proxy, so "the simulator
	// stopped" is the proxy closing: every connection and the port go away.
	simURL, err := url.Parse(env.SimURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := runnertest.NewProxy(t, simURL.Host)
	keys := filepath.Join(t.TempDir(), "payload-keys.json")
	newKey := exec.CommandContext(t.Context(), bin, "codec", "new-key", "--payload-keys", keys)
	newKey.Env = append(replicaEnv(), "AGENTRUNNER_CIPHER=local", "AGENTRUNNER_KEYRING="+env.Keyring)
	if out, err := newKey.CombinedOutput(); err != nil {
		t.Fatalf("codec new-key: %v\n%s", err, out)
	}
	common := append(replicaEnv(),
		"AGENTRUNNER_PAYLOAD_KEYS="+keys,
		"DATABASE_URL="+env.DSN,
		"BUKO_API_URL=http://"+proxy.Addr(),
		"TEMPORAL_ADDRESS="+temporal,
		"TEMPORAL_TASK_QUEUE=live-"+testsupport.RandHex(6),
		"AGENTRUNNER_CIPHER=local",
		"AGENTRUNNER_KEYRING="+env.Keyring,
		"AGENTRUNNER_ADMIN_ADDR=127.0.0.1:0",
		"AGENTRUNNER_LEASE_TTL=3s",
		"AGENTRUNNER_DRAIN_TIMEOUT=5s",
		"AGENTRUNNER_LOG_FORMAT=json",
	)
	a := startReplica(t, bin, "live-a", common)
	b := startReplica(t, bin, "live-b", common)
	p := startPrometheus(t, []string{a.metrics, b.metrics})

	testsupport.Until(t, "both replicas scraped", 2*time.Minute, func() (bool, string) {
		for _, r := range []*liveReplica{a, b} {
			select {
			case <-r.done:
				t.Fatalf("replica %s exited", r.id)
			default:
			}
		}
		n, err := p.query(`up{job="agentrunner"} == 1`)
		return n == 2, fmt.Sprintf("%d up (%v)", n, err)
	})
	testsupport.Until(t, "every bot live", 2*time.Minute, func() (bool, string) {
		live, _ := env.Live(t, runnertest.IDs(bots))
		return live == len(bots), fmt.Sprintf("%d of %d live", live, len(bots))
	})
	// Traffic, so the handoff, reply and Bot API series have samples.
	for round := range 3 {
		for _, bot := range bots {
			env.Send(t, bot, fmt.Sprintf("live %d", round))
		}
	}
	ctx := t.Context()
	for _, bot := range bots {
		testsupport.Within(t, "the echo replies of "+bot.Handle, 2*time.Minute, func() bool {
			tr, err := env.Control.Transcript(ctx, bot.ChatID, "")
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, m := range tr {
				if m.FromKind == "bot" && strings.HasPrefix(m.Text, "live ") {
					n++
				}
			}
			return n == 3
		})
	}

	// Every dashboard query answers with data at some point of the run: most
	// on a healthy system, the error panels once the simulator's chaos (dropped
	// sockets, 429s and 5xx on REST) and the faults below have caused errors.
	queries := dashboardQueries(t)
	if len(queries) < 50 {
		t.Fatalf("only %d dashboard queries", len(queries))
	}
	seen := map[string]bool{}
	logged := -1
	sample := func(stage string) []string {
		var empty []string
		for title, expr := range queries {
			if seen[title] {
				continue
			}
			n, err := p.query(expr)
			if err != nil {
				t.Fatalf("dashboard %s: %s: %v", title, expr, err)
			}
			if n > 0 {
				seen[title] = true
			} else {
				empty = append(empty, title+": "+expr)
			}
		}
		sort.Strings(empty)
		if len(seen) != logged {
			logged = len(seen)
			t.Logf("%s: %d of %d dashboard queries have returned data", stage, len(seen), len(queries))
		}
		return empty
	}
	testsupport.Until(t, "the healthy system's dashboard queries return data", 30*time.Second, func() (bool, string) {
		empty := sample("healthy")
		return len(empty) <= len(queries)/4, strings.Join(empty, "\n")
	})

	// Chaos for a while, with traffic, then back to normal.
	if _, err := env.Control.SetChaos(ctx, sim.ChaosConfig{Seed: 17, DropConnectionRate: 0.2, Rest429Rate: 0.3, Rest5xxRate: 0.1}); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		for _, bot := range bots {
			env.Send(t, bot, fmt.Sprintf("chaos %d", round))
		}
	}
	chaosPanels := []string{"429s (rate limited) / A", "Reconnects by cause / A"}
	testsupport.Until(t, "the chaos on the dashboard", 90*time.Second, func() (bool, string) {
		sample("under chaos")
		var missing []string
		for _, c := range chaosPanels {
			if !seen[c] {
				missing = append(missing, c)
			}
		}
		return len(missing) == 0, "no data yet: " + strings.Join(missing, ", ")
	})
	if _, err := env.Control.SetChaos(ctx, sim.ChaosConfig{}); err != nil {
		t.Fatal(err)
	}
	testsupport.Until(t, "every bot live again after the chaos", 2*time.Minute, func() (bool, string) {
		live, _ := env.Live(t, runnertest.IDs(bots))
		return live == len(bots), fmt.Sprintf("%d of %d live", live, len(bots))
	})

	// A healthy system fires none of the alerts the faults below cause.
	testsupport.Until(t, "no fault alert pending or firing before the faults", time.Minute, func() (bool, string) {
		for _, name := range []string{"AgentrunnerBotsDown", "AgentrunnerTargetDown", "AgentrunnerBotSessionsNotLive"} {
			if st := p.state(t, name, ""); st != "" {
				return false, name + " is " + st
			}
		}
		return true, ""
	})

	// Fault 1: a replica is killed; its target is down (its shards move to a).
	killed := time.Now()
	_ = b.cmd.Process.Kill()
	<-b.done
	p.waitFiring(t, killed, "AgentrunnerTargetDown", b.metrics, 2*time.Minute)
	if st := p.state(t, "AgentrunnerTargetDown", a.metrics); st != "" {
		t.Errorf("AgentrunnerTargetDown is %s for the live replica %s", st, a.metrics)
	}
	testsupport.Until(t, "every bot live on replica a", 2*time.Minute, func() (bool, string) {
		live, _ := env.Live(t, runnertest.IDs(bots))
		return live == len(bots), fmt.Sprintf("%d of %d live", live, len(bots))
	})

	// Then a bot's token is revoked (rotated in Buko, not in agentrunner):
	// after three 401s in a row its session gives up, the bot is marked
	// auth_failed and its session stopped. By design no alert pages for one
	// bot's token (the owner's problem; docs/deploy.md): the bot's status
	// and the auth-failure counter show it.
	if _, err := env.Control.RotateToken(ctx, bots[0].ID); err != nil {
		t.Fatal(err)
	}
	testsupport.Until(t, "the revoked bot marked auth_failed", 2*time.Minute, func() (bool, string) {
		var status string
		err := env.Pool.QueryRow(ctx, `SELECT status FROM bots WHERE id = $1`, bots[0].ID).Scan(&status)
		return err == nil && status == "auth_failed", fmt.Sprintf("status %q (%v)", status, err)
	})
	testsupport.Until(t, "the auth failures on the dashboard", time.Minute, func() (bool, string) {
		n, err := p.query(`sum(agentrunner_sessions_auth_failures_total) >= 3`)
		return n > 0, fmt.Sprint(err)
	})

	// Fault 2: the simulator goes away; every session backs off. The two
	// alerts it fires are inactive first (the revoked bot's retries may have
	// made them pending).
	testsupport.Until(t, "the session alerts inactive before the simulator stops", time.Minute, func() (bool, string) {
		for _, name := range []string{"AgentrunnerBotsDown", "AgentrunnerBotSessionsNotLive"} {
			if st := p.state(t, name, ""); st != "" {
				return false, name + " is " + st
			}
		}
		return true, ""
	})
	simStopped := time.Now()
	proxy.Close()
	p.waitFiring(t, simStopped, "AgentrunnerBotsDown", "", 2*time.Minute)
	p.waitFiring(t, simStopped, "AgentrunnerBotSessionsNotLive", "", 2*time.Minute)

	var never []string
	for _, q := range sample("after the faults") {
		title, _, _ := strings.Cut(q, ": ")
		if why, ok := dashboardNeedsElsewhere(title); ok {
			t.Logf("no data, as expected here (%s): %s", why, q)
			continue
		}
		never = append(never, q)
	}
	if len(never) > 0 {
		t.Errorf("%d dashboard queries never returned data:\n%s", len(never), strings.Join(never, "\n"))
	}
}

// dashboardNeedsElsewhere names the dashboard panels whose series this test's
// system cannot produce: the replicas use the local keyring (no Vault Transit,
// no Vault login) and hand off to Temporal (not the Postgres queue).
func dashboardNeedsElsewhere(title string) (string, bool) {
	switch {
	case strings.HasPrefix(title, "Vault Transit "), strings.HasPrefix(title, "Cipher errors, logins, token renewals / B"),
		strings.HasPrefix(title, "Cipher errors, logins, token renewals / C"):
		return "Vault Transit and Vault auth: the replicas here use the local keyring", true
	case strings.HasPrefix(title, "Handoff errors / C"):
		return "the Postgres handoff queue: the replicas here hand off to Temporal", true
	case strings.HasPrefix(title, "429s (rate limited) / C"), strings.HasPrefix(title, "Auth failures and polling / B"):
		return "getUpdates polling: the sessions here use the Gateway", true
	case strings.HasPrefix(title, "429s (rate limited) / B"):
		return "429 on the Gateway upgrade: the simulator's chaos has no such fault", true
	case strings.HasPrefix(title, "Cipher errors, logins, token renewals / A"):
		return "a token that does not decrypt: every row here is sealed with the replicas' keyring", true
	case strings.HasPrefix(title, "Handoff errors / B"), strings.HasPrefix(title, "Poll and request errors /"):
		return "Temporal refusing requests: the shared Temporal server stays up", true
	}
	return "", false
}
