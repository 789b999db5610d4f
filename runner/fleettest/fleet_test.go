package fleettest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

// binPath is the agentrunner binary built by TestMain.
var binPath string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "agentrunner-fleet-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleettest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "agentrunner")
	args := []string{"build", "-o", binPath}
	if os.Getenv("AGENTRUNNER_FLEET_RACE") == "1" {
		args = append(args, "-race")
	}
	args = append(args, "buko.app/agentrunner/cmd/agentrunner")
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "fleettest: building agentrunner:", err)
		return 1
	}
	return m.Run()
}

// fleet is a set of replica processes sharing one Env.
type fleet struct {
	t   testing.TB
	env *runnertest.Env
	dir string
	ttl time.Duration

	mu       sync.Mutex
	replicas []*replica
}

func newFleet(t testing.TB, env *runnertest.Env, ttl time.Duration) *fleet {
	t.Helper()
	dir := t.TempDir()
	if keep := os.Getenv("AGENTRUNNER_FLEET_LOGDIR"); keep != "" {
		// Keep the replicas' logs for inspection.
		dir = filepath.Join(keep, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f := &fleet{t: t, env: env, dir: dir, ttl: ttl}
	t.Cleanup(f.stopAll)
	return f
}

// replica is one `agentrunner serve` process.
type replica struct {
	id      string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // exit status, valid after done
}

// start launches a replica; dsn "" means the Env's database.
func (f *fleet) start(id, dsn string, extraEnv ...string) *replica {
	f.t.Helper()
	if dsn == "" {
		dsn = f.env.DSN
	}
	logPath := filepath.Join(f.dir, id+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	cmd := exec.Command(binPath, "serve")
	cmd.Env = append(cleanEnv(),
		"DATABASE_URL="+dsn,
		"BUKO_API_URL="+f.env.SimURL,
		"AGENTRUNNER_CIPHER=local",
		"AGENTRUNNER_KEYRING="+f.env.Keyring,
		"AGENTRUNNER_RUNNER_ID="+id,
		"AGENTRUNNER_ADMIN_ADDR=127.0.0.1:0",
		"AGENTRUNNER_LEASE_TTL="+f.ttl.String(),
		"AGENTRUNNER_DRAIN_TIMEOUT=20s",
		"AGENTRUNNER_HANDOFF=postgres", // these tests count rows of the handoffs table
		"AGENTRUNNER_RECONCILE_INTERVAL=5s",
		"AGENTRUNNER_LOG_FORMAT=json",
	)
	if lvl := os.Getenv("AGENTRUNNER_FLEET_LOG_LEVEL"); lvl != "" {
		cmd.Env = append(cmd.Env, "AGENTRUNNER_LOG_LEVEL="+lvl)
	}
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		f.t.Fatalf("start replica %s: %v", id, err)
	}
	r := &replica{id: id, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		_ = logFile.Close()
		close(r.done)
	}()
	f.mu.Lock()
	f.replicas = append(f.replicas, r)
	f.mu.Unlock()
	return r
}

// cleanEnv is the environment minus settings that would steer a replica
// elsewhere.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AGENTRUNNER_") || strings.HasPrefix(k, "VAULT_") ||
			strings.HasPrefix(k, "BUKO_") || k == "DATABASE_URL" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (r *replica) signal(sig syscall.Signal) {
	_ = r.cmd.Process.Signal(sig)
}

// kill9 ends the replica at once, as a crash would.
func (r *replica) kill9() { r.signal(syscall.SIGKILL) }

// term asks the replica to drain.
func (r *replica) term() { r.signal(syscall.SIGTERM) }

// wait returns the replica's exit error, failing the test after d.
func (r *replica) wait(t testing.TB, d time.Duration) error {
	t.Helper()
	testsupport.Within(t, "replica "+r.id+" to exit", d, func() bool {
		select {
		case <-r.done:
			return true
		default:
			return false
		}
	})
	return r.err
}

func (r *replica) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// tail returns the last lines of the replica's log.
func (r *replica) tail(n int) string {
	b, err := os.ReadFile(r.logPath)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// countLog counts the log lines that contain s.
func (r *replica) countLog(s string) int {
	fh, err := os.Open(r.logPath)
	if err != nil {
		return 0
	}
	defer fh.Close()
	n := 0
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}

// lastLogTime returns the time of the last log line containing every one of
// subs, or the zero time.
func (r *replica) lastLogTime(subs ...string) time.Time {
	fh, err := os.Open(r.logPath)
	if err != nil {
		return time.Time{}
	}
	defer fh.Close()
	var last time.Time
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		match := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		var rec struct {
			Time time.Time `json:"time"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Time.After(last) {
			last = rec.Time
		}
	}
	return last
}

// stopAll kills what still runs (cleanup) and shows logs of a failed test.
func (f *fleet) stopAll() {
	f.mu.Lock()
	rs := append([]*replica(nil), f.replicas...)
	f.mu.Unlock()
	for _, r := range rs {
		if !r.exited() {
			r.kill9()
		}
		<-r.done
		if f.t.Failed() {
			f.t.Logf("---- replica %s log (tail) ----\n%s", r.id, r.tail(40))
		}
	}
}

// adminURL is the replica's admin base URL, as it recorded it in runners.
func (f *fleet) adminURL(id string) string {
	f.t.Helper()
	var addr string
	testsupport.Within(f.t, "replica "+id+" to record its admin address", 60*time.Second, func() bool {
		err := f.env.Pool.QueryRow(context.Background(), `SELECT admin_addr FROM runners WHERE id = $1`, id).Scan(&addr)
		return err == nil && addr != ""
	})
	return "http://" + addr
}

// metric reads one sample line (name with labels, as printed) from a replica's /metrics.
func metric(t testing.TB, base, name string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+" ") {
			var v float64
			if _, err := fmt.Sscanf(strings.TrimPrefix(line, name+" "), "%g", &v); err == nil {
				return v, true
			}
		}
	}
	return 0, false
}

// owners returns the live lease count per owner.
func (f *fleet) owners() map[string]int {
	f.t.Helper()
	rows, err := f.env.Pool.Query(context.Background(), `SELECT owner, count(*) FROM shard_leases
		WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner`)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var o string
		var n int
		if err := rows.Scan(&o, &n); err != nil {
			f.t.Fatal(err)
		}
		out[o] = n
	}
	return out
}

// botsOf returns the ids of the bots whose shards owner holds.
func (f *fleet) botsOf(owner string) map[string]bool {
	f.t.Helper()
	rows, err := f.env.Pool.Query(context.Background(), `SELECT b.id FROM bots b JOIN shard_leases l ON l.shard = b.shard
		WHERE l.owner = $1`, owner)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			f.t.Fatal(err)
		}
		out[id] = true
	}
	return out
}

// allLive waits until every bot of ids has exactly one open socket.
func (f *fleet) allLive(what string, ids map[string]bool, d time.Duration) {
	f.t.Helper()
	testsupport.Within(f.t, what, d, func() bool {
		live, maxOpen := f.env.Live(f.t, ids)
		if maxOpen > 1 {
			f.t.Fatalf("a bot has %d sockets open at once", maxOpen)
		}
		return live == len(ids)
	})
}

// sender sends messages to bots round robin until stopped, and remembers them.
type sender struct {
	env  *runnertest.Env
	bots []runnertest.Bot
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	sent map[string][]string // bot id → texts
	errs []error
}

func startSender(env *runnertest.Env, bots []runnertest.Bot, tag string, every time.Duration) *sender {
	s := &sender{env: env, bots: bots, stop: make(chan struct{}), done: make(chan struct{}), sent: map[string][]string{}}
	go func() {
		defer close(s.done)
		for i := 0; ; i++ {
			b := bots[i%len(bots)]
			text := fmt.Sprintf("%s-%d", tag, i)
			err := env.SendErr(b, text)
			s.mu.Lock()
			if err != nil {
				s.errs = append(s.errs, err)
			} else {
				s.sent[b.ID] = append(s.sent[b.ID], text)
			}
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return s
}

// waitSent waits until the sender has sent at least n messages, so a test
// acts on an amount of traffic, whatever the machine's speed.
func (s *sender) waitSent(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	testsupport.Within(t, fmt.Sprintf("%d messages sent", n), timeout, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		got := 0
		for _, v := range s.sent {
			got += len(v)
		}
		return got >= n
	})
}

// finish stops the sender and returns what it sent.
func (s *sender) finish(t testing.TB) map[string][]string {
	t.Helper()
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.errs {
		t.Errorf("send: %v", err)
	}
	n := 0
	for _, v := range s.sent {
		n += len(v)
	}
	t.Logf("sent %d messages", n)
	return s.sent
}

// handedOffOnce waits until every sent text is in the handoffs table exactly
// once, and checks that every update the simulator created was handed off.
func (f *fleet) handedOffOnce(sent map[string][]string, d time.Duration) {
	f.t.Helper()
	testsupport.Until(f.t, "every sent text handed off once", d, func() (bool, string) {
		missing := ""
		got := f.env.HandedOffTexts(f.t)
		for bot, texts := range sent {
			for _, text := range texts {
				switch n := got[bot][text]; {
				case n == 0 && missing == "":
					missing = fmt.Sprintf("bot %s: %q not handed off", bot, text)
				case n > 1:
					f.t.Fatalf("bot %s: %q handed off as %d updates", bot, text, n)
				}
			}
		}
		return missing == "", missing + " (and maybe more)"
	})
	var rows, dups int
	if err := f.env.Pool.QueryRow(context.Background(), `SELECT count(*), coalesce(sum(attempts - 1), 0) FROM handoffs`).Scan(&rows, &dups); err != nil {
		f.t.Fatal(err)
	}
	st := f.env.Stats(f.t)
	if int64(rows) != st.UpdatesCreated {
		f.t.Fatalf("handoffs rows %d, simulator created %d updates", rows, st.UpdatesCreated)
	}
	f.t.Logf("handed off %d updates once each (%d redelivered duplicates absorbed)", rows, dups)
}
