package soak

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/rs/zerolog"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/types/known/durationpb"

	"buko.app/agentrunner/workflows"
)

// temporalServer is the soak's own Temporal server (go.temporal.io/server,
// built by deploy/dev/temporal-server.sh) on SQL persistence: two databases
// of its own on a Postgres (history and visibility), its schemas laid by
// temporal-sql-tool, several history shards, ports of its own. Restarting it
// keeps its data.
type temporalServer struct {
	serverBin, sqlTool, schemaDir string
	pgHost                        string
	pgPort                        int
	db, visDB                     string
	shards                        int
	base                          int // frontend gRPC port; the rest follow
	dir                           string
	proc                          *proc
}

func (t *temporalServer) addr() string { return fmt.Sprintf("127.0.0.1:%d", t.base) }

func (t *temporalServer) sql(ctx context.Context, db string, args ...string) error {
	all := append([]string{"--ep", t.pgHost, "-p", fmt.Sprint(t.pgPort), "-u", "postgres", "--pl", "postgres12", "--db", db}, args...)
	return run(ctx, t.sqlTool, all...)
}

// setup creates both databases and lays and upgrades their schemas.
func (t *temporalServer) setup(ctx context.Context) error {
	for _, s := range []struct{ db, schema string }{{t.db, "temporal"}, {t.visDB, "visibility"}} {
		if err := t.sql(ctx, s.db, "create-database"); err != nil {
			return err
		}
		if err := t.sql(ctx, s.db, "setup-schema", "-v", "0.0"); err != nil {
			return err
		}
		if err := t.sql(ctx, s.db, "update-schema", "-d", filepath.Join(t.schemaDir, s.schema, "versioned")); err != nil {
			return err
		}
	}
	return t.writeConfig()
}

var temporalConfig = template.Must(template.New("cfg").Parse(`log:
  stdout: true
  level: warn
persistence:
  defaultStore: default
  visibilityStore: visibility
  numHistoryShards: {{.Shards}}
  datastores:
{{- range .Stores}}
    {{.Name}}:
      sql:
        pluginName: postgres12
        databaseName: {{.DB}}
        connectAddr: "{{$.PG}}"
        connectProtocol: tcp
        user: postgres
        password: ""
        maxConns: {{.Conns}}
        maxIdleConns: {{.Conns}}
        maxConnLifetime: 1h
{{- end}}
global:
  membership:
    maxJoinDuration: 30s
    broadcastAddress: 127.0.0.1
  metrics:
    prometheus:
      framework: tally
      timerType: histogram
      listenAddress: 127.0.0.1:{{.Metrics}}
services:
{{- range .Services}}
  {{.Name}}:
    rpc:
      grpcPort: {{.GRPC}}
      membershipPort: {{.Membership}}
      bindOnIP: 127.0.0.1
{{- if .HTTP}}
      httpPort: {{.HTTP}}
{{- end}}
{{- end}}
clusterMetadata:
  enableGlobalNamespace: false
  failoverVersionIncrement: 10
  masterClusterName: active
  currentClusterName: active
  clusterInformation:
    active:
      enabled: true
      initialFailoverVersion: 1
      rpcName: frontend
      rpcAddress: 127.0.0.1:{{.Base}}
dcRedirectionPolicy:
  policy: noop
dynamicConfigClient:
  filepath: {{.Dir}}/config/dynamic.yaml
  pollInterval: 10s
`))

const temporalDynamic = `history.timerProcessorMaxTimeShift:
  - value: 100ms
limit.maxIDLength:
  - value: 255
`

func (t *temporalServer) writeConfig() error {
	type store struct {
		Name, DB string
		Conns    int
	}
	type svc struct {
		Name                   string
		GRPC, Membership, HTTP int
	}
	b := t.base
	data := map[string]any{
		"Shards": t.shards, "PG": fmt.Sprintf("%s:%d", t.pgHost, t.pgPort), "Base": b, "Metrics": b + 5, "Dir": t.dir,
		"Stores": []store{{"default", t.db, 20}, {"visibility", t.visDB, 4}},
		"Services": []svc{{"frontend", b, b + 10, b + 4}, {"history", b + 1, b + 11, 0},
			{"matching", b + 2, b + 12, 0}, {"worker", b + 3, b + 13, 0}},
	}
	var sb strings.Builder
	if err := temporalConfig.Execute(&sb, data); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(t.dir, "config"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(t.dir, "config", "development.yaml"), []byte(sb.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(t.dir, "config", "dynamic.yaml"), []byte(temporalDynamic), 0o644)
}

func (t *temporalServer) newProc(logPath string) {
	t.proc = newProc("temporal", logPath, func() *exec.Cmd {
		return exec.Command(t.serverBin, "--root", t.dir, "--config", "config", "--env", "development", "--allow-no-auth", "start")
	})
}

// waitNamespace waits until namespace ns answers, registering it if missing.
func (t *temporalServer) waitNamespace(ctx context.Context, ns string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var last error
	for {
		if !t.proc.running() {
			return fmt.Errorf("the temporal server exited (log %s): %v", t.proc.logPath, last)
		}
		if err := t.ensureNamespace(ctx, ns); err == nil {
			return nil
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("temporal on %s: namespace %s not usable within %s: %w", t.addr(), ns, limit, last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (t *temporalServer) ensureNamespace(ctx context.Context, ns string) error {
	nc, err := client.NewNamespaceClient(client.Options{HostPort: t.addr(), Logger: workflows.NewLogger(zerolog.Nop())})
	if err != nil {
		return err
	}
	defer nc.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := nc.Describe(cctx, ns); err == nil {
		return nil
	}
	err = nc.Register(cctx, &workflowservice.RegisterNamespaceRequest{Namespace: ns, WorkflowExecutionRetentionPeriod: durationpb.New(24 * time.Hour)})
	if err != nil && !strings.Contains(err.Error(), "already") {
		return err
	}
	_, err = nc.Describe(cctx, ns)
	return err
}
