package soak

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// cluster is the soak's own Postgres: initdb in a folder of the run, pg_ctl
// to start, stop and restart it, on a port of its own, so that restarting it
// touches nothing else on the machine.
type cluster struct {
	binDir string // initdb, pg_ctl
	dir    string // the data directory (also the socket directory)
	log    string
	port   int
	asUser string // "" or the user to run as (initdb refuses root)
}

func newCluster(binDir, runDir string, port int) (*cluster, error) {
	c := &cluster{binDir: binDir, dir: filepath.Join(runDir, "pgdata"), log: filepath.Join(runDir, "postgres.log"), port: port}
	if os.Geteuid() == 0 {
		c.asUser = "postgres"
		u, err := user.Lookup(c.asUser)
		if err != nil {
			return nil, fmt.Errorf("postgres as root needs the user postgres: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		// The run folder must be enterable by postgres, and its files its own.
		if err := os.Chmod(runDir, 0o755); err != nil {
			return nil, err
		}
		for _, p := range []string{c.dir, c.log} {
			if p == c.dir {
				if err := os.MkdirAll(p, 0o700); err != nil {
					return nil, err
				}
			} else if err := os.WriteFile(p, nil, 0o600); err != nil {
				return nil, err
			}
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

func (c *cluster) cmd(ctx context.Context, tool string, args ...string) *exec.Cmd {
	bin := filepath.Join(c.binDir, tool)
	if c.asUser != "" {
		return exec.CommandContext(ctx, "runuser", append([]string{"-u", c.asUser, "--", bin}, args...)...)
	}
	return exec.CommandContext(ctx, bin, args...)
}

func (c *cluster) runTool(ctx context.Context, tool string, args ...string) error {
	out, err := c.cmd(ctx, tool, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w: %s", tool, args, err, lastLines(string(out), 8))
	}
	return nil
}

// init creates the cluster (trust auth, superuser postgres).
func (c *cluster) init(ctx context.Context) error {
	return c.runTool(ctx, "initdb", "-D", c.dir, "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
}

// start starts the server and waits until it accepts connections.
func (c *cluster) start(ctx context.Context) error {
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400", c.port, c.dir)
	return c.runTool(ctx, "pg_ctl", "-D", c.dir, "-l", c.log, "-w", "-t", "60", "-o", opts, "start")
}

// stop stops the server: fast mode ends every session at once, as a failover does.
func (c *cluster) stop(ctx context.Context) error {
	return c.runTool(ctx, "pg_ctl", "-D", c.dir, "-m", "fast", "-w", "-t", "60", "stop")
}

// dsn is the URL of database db.
func (c *cluster) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// createDB creates database db on a server at dsn (postgres database).
func createDB(ctx context.Context, adminDSN, db string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	return nil
}

// dropDB drops database db, ending its sessions.
func dropDB(adminDSN, db string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)")
	return err
}
