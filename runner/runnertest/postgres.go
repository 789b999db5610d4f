package runnertest

// A Postgres server owned by one test (initdb in a temporary directory, its
// own port), so the test can restart it without disturbing the machine's.

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"buko.app/agentrunner/internal/testsupport"
)

// Postgres is a test's own Postgres server on 127.0.0.1.
type Postgres struct {
	bin, data, log string
	port           int
	asUser         *syscall.Credential // the server's user when the test runs as root
}

// PostgresBinDir is where the server's binaries are looked for
// ($AGENTRUNNER_PG_BIN, default /usr/lib/postgresql/15/bin).
func PostgresBinDir() string {
	if v := os.Getenv("AGENTRUNNER_PG_BIN"); v != "" {
		return v
	}
	return "/usr/lib/postgresql/15/bin"
}

// StartPostgres initializes and starts a server (trust auth, fsync off) that
// is stopped and removed at test cleanup.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin := PostgresBinDir()
	if _, err := os.Stat(filepath.Join(bin, "pg_ctl")); err != nil {
		testsupport.Unavailable(t, "Postgres binaries", err.Error(), "install postgresql-15 or set AGENTRUNNER_PG_BIN")
		return nil
	}
	dir, err := os.MkdirTemp("", "agentrunner-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p := &Postgres{bin: bin, data: filepath.Join(dir, "data"), log: filepath.Join(dir, "server.log")}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root: the server runs as postgres.
		u, err := user.Lookup("postgres")
		if err != nil {
			testsupport.Unavailable(t, "Postgres", "running as root and no postgres user: "+err.Error(), "run the tests as a normal user")
			return nil
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.asUser = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.port = ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	p.run(t, "initdb", "-D", p.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
	p.run(t, "pg_ctl", "-D", p.data, "-l", p.log, "-w", "-t", "60", "-o", p.options(dir), "start")
	t.Cleanup(func() { _ = p.cmd("pg_ctl", "-D", p.data, "-m", "immediate", "-w", "stop").Run() })
	return p
}

func (p *Postgres) options(dir string) string {
	return fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", p.port, dir)
}

func (p *Postgres) cmd(name string, args ...string) *exec.Cmd {
	c := exec.Command(filepath.Join(p.bin, name), args...)
	if p.asUser != nil {
		c.SysProcAttr = &syscall.SysProcAttr{Credential: p.asUser}
	}
	c.Dir = os.TempDir()
	return c
}

func (p *Postgres) run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := p.cmd(name, args...).CombinedOutput()
	if err != nil {
		logs, _ := os.ReadFile(p.log)
		t.Fatalf("runnertest: %s %s: %v\n%s\n%s", name, strings.Join(args, " "), err, out, logs)
	}
}

// AdminURL is the DSN of the server's postgres database as superuser.
func (p *Postgres) AdminURL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
}

// Stop stops the server (pg_ctl stop -m fast: every connection is ended at
// once, and new ones are refused until Start).
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	p.run(t, "pg_ctl", "-D", p.data, "-w", "-t", "60", "-m", "fast", "stop")
}

// Start starts the stopped server and returns once it accepts connections.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	p.run(t, "pg_ctl", "-D", p.data, "-l", p.log, "-w", "-t", "60", "-o", p.options(filepath.Dir(p.data)), "start")
	testsupport.Within(t, "the restarted Postgres to accept connections", 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, p.AdminURL())
		if err != nil {
			return false
		}
		_ = c.Close(ctx)
		return true
	})
}

// Restart stops the server, keeps it down for at least down, and starts it;
// it returns how long the server was unavailable.
func (p *Postgres) Restart(t testing.TB, down time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	p.Stop(t)
	testsupport.Within(t, "Postgres to stay down "+down.String(), down+time.Minute, func() bool { return time.Since(start) >= down })
	p.Start(t)
	return time.Since(start)
}
