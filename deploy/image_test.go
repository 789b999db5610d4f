package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

// The release image, built by `make image` (deploy/image.sh: deploy/rootfs.sh
// plus podman build of deploy/Dockerfile) and run with podman: its version
// stamp, and `serve` on a read-only root filesystem against the machine's
// Postgres, Temporal and the simulator.

const podmanHint = "run `bash deploy/dev/podman.sh` (make services does)"

// podman returns a function running podman with the project's containers.conf.
func podman(t *testing.T) func(ctx context.Context, args ...string) (string, error) {
	t.Helper()
	root := repoRoot(t)
	bin, err := exec.Command("bash", filepath.Join(root, "deploy", "dev", "podman.sh"), "bin").Output()
	testsupport.Require(t, "podman", errIfEmpty(bin, err, "podman is not installed"), podmanHint)
	conf, err := exec.Command("bash", filepath.Join(root, "deploy", "dev", "podman.sh"), "conf").Output()
	if err != nil {
		t.Fatal(err)
	}
	path, cc := strings.TrimSpace(string(bin)), strings.TrimSpace(string(conf))
	return func(ctx context.Context, args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+cc)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("podman %s: %w\n%s", strings.Join(args, " "), err, errb.String())
		}
		return out.String(), nil
	}
}

func errIfEmpty(out []byte, err error, msg string) error {
	if err != nil || strings.TrimSpace(string(out)) == "" {
		return errors.New(msg)
	}
	return nil
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repo root %s has no go.mod: %v", root, err)
	}
	return root
}

// buildImage runs deploy/image.sh (what `make image` runs) with a test tag and
// version stamp; the image is removed at cleanup.
func buildImage(t *testing.T, pm func(context.Context, ...string) (string, error), version string) string {
	t.Helper()
	tag := "localhost/agentrunner:test-" + testsupport.RandHex(6)
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(repoRoot(t), "deploy", "image.sh"), tag)
	cmd.Env = append(os.Environ(), "VERSION="+version, "COMMIT=0123456789abcdef", "DATE=2026-12-03T00:00:00Z")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	start := time.Now()
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("deploy/image.sh: %v\n%s%s", err, out, errb.String())
	}
	t.Logf("image %s built in %s", tag, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { _, _ = pm(context.Background(), "rmi", "-f", tag) })
	return tag
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestImageRunsServe(t *testing.T) {
	pm := podman(t)
	temporal := testsupport.Getenv(t, "Temporal", "TEMPORAL_ADDRESS", testsupport.ServicesHint)
	version := "imagetest-" + testsupport.RandHex(4)
	tag := buildImage(t, pm, version)
	ctx := t.Context()

	// The image: nonroot numeric user, OCI labels carrying the stamps.
	info, err := pm(ctx, "image", "inspect", "--format",
		`{{.Config.User}}|{{index .Config.Labels "org.opencontainers.image.version"}}|{{index .Config.Labels "org.opencontainers.image.revision"}}|{{json .Config.Entrypoint}}`, tag)
	if err != nil {
		t.Fatal(err)
	}
	if want := `65532:65532|` + version + `|0123456789abcdef|["/usr/local/bin/agentrunner"]`; strings.TrimSpace(info) != want {
		t.Errorf("image config %q, want %q", strings.TrimSpace(info), want)
	}
	// No shell: running one fails.
	if out, err := pm(ctx, "run", "--rm", "--entrypoint", "/bin/sh", tag, "-c", "true"); err == nil {
		t.Errorf("the image runs /bin/sh (%q): it must have no shell", out)
	}

	out, err := pm(ctx, "run", "--rm", "--read-only", "--network", "none", tag, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "agentrunner "+version) || !strings.Contains(out, "0123456789abcdef") {
		t.Fatalf("version in the image printed %q, want the stamps %s and the commit", out, version)
	}

	// serve: a bot in the simulator and the database, its token sealed with a
	// local keyring the container reads from a read-only mount.
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bot := env.AddBots(t, 1, "image")[0]
	keyDir := t.TempDir()
	raw, err := os.ReadFile(env.Keyring)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keyDir, "keyring"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	// The container runs as 65532; the test runs as root on the build machines.
	if os.Getuid() == 0 {
		if err := os.Chown(filepath.Join(keyDir, "keyring"), 65532, 65532); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(keyDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The payload key file, made by the image's own `codec new-key`.
	keysDir := t.TempDir()
	if os.Getuid() == 0 {
		if err := os.Chown(keysDir, 65532, 65532); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := pm(ctx, "run", "--rm", "--read-only", "--network", "none",
		"-v", keyDir+":/etc/agentrunner/keyring:ro", "-v", keysDir+":/etc/agentrunner/payload",
		"-e", "AGENTRUNNER_CIPHER=local", "-e", "AGENTRUNNER_KEYRING=/etc/agentrunner/keyring/keyring",
		tag, "codec", "new-key", "--payload-keys", "/etc/agentrunner/payload/payload-keys.json"); err != nil {
		t.Fatalf("codec new-key in the image: %v\n%s", err, out)
	}
	adminAddr, metricsAddr := freeAddr(t), freeAddr(t)
	name := "agentrunner-test-" + testsupport.RandHex(6)
	args := []string{"run", "--rm", "--name", name, "--read-only", "--network", "host",
		"--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"-v", keyDir + ":/etc/agentrunner/keyring:ro",
		"-v", keysDir + ":/etc/agentrunner/payload:ro",
		"-e", "AGENTRUNNER_PAYLOAD_KEYS=/etc/agentrunner/payload/payload-keys.json",
		"-e", "DATABASE_URL=" + env.DSN,
		"-e", "TEMPORAL_ADDRESS=" + temporal,
		"-e", "TEMPORAL_TASK_QUEUE=image-" + testsupport.RandHex(6),
		"-e", "BUKO_API_URL=" + env.SimURL,
		"-e", "AGENTRUNNER_CIPHER=local",
		"-e", "AGENTRUNNER_KEYRING=/etc/agentrunner/keyring/keyring",
		"-e", "AGENTRUNNER_ADMIN_ADDR=" + adminAddr,
		"-e", "AGENTRUNNER_METRICS_ADDR=" + metricsAddr,
		"-e", "AGENTRUNNER_LEASE_TTL=3s",
		"-e", "AGENTRUNNER_DRAIN_TIMEOUT=10s",
		"-e", "AGENTRUNNER_LOG_FORMAT=json",
		tag, "serve"}
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() {
		cmd := exec.CommandContext(runCtx, podmanPath(t), args...)
		cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+containersConf(t))
		cmd.Stdout, cmd.Stderr = &logs, &logs
		done <- cmd.Run()
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if _, err := pm(context.Background(), "stop", "--time", "60", name); err != nil {
			t.Errorf("podman stop: %v", err)
		}
	}
	exited := false
	defer func() {
		stop()
		if !exited {
			select {
			case <-done:
			case <-time.After(90 * time.Second):
				stopRun()
			}
		}
		if t.Failed() {
			t.Logf("container output:\n%s", logs.String())
		}
	}()

	ready := func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("the container exited early: %v", err)
		default:
		}
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	started := time.Now()
	testsupport.Within(t, "/readyz in the container", 2*time.Minute, ready)
	t.Logf("/readyz in the container after %s", time.Since(started).Round(time.Millisecond))

	env.Send(t, bot, "hello from the image")
	testsupport.Within(t, "the echo reply", 2*time.Minute, func() bool {
		tr, err := env.Control.Transcript(ctx, bot.ChatID, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range tr {
			if m.FromKind == "bot" && m.Text == "hello from the image" {
				return true
			}
		}
		return false
	})

	t.Logf("echo reply from the container after %s", time.Since(started).Round(time.Millisecond))
	// SIGTERM drains and exits 0.
	stopping := time.Now()
	stop()
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Fatalf("serve in the container after SIGTERM: %v", err)
		}
		t.Logf("container stopped %s after SIGTERM", time.Since(stopping).Round(time.Millisecond))
	case <-time.After(testsupport.Timeout(90 * time.Second)):
		t.Fatal("the container did not stop within 90 s of SIGTERM")
	}
}

func podmanPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("podman")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func containersConf(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("bash", filepath.Join(repoRoot(t), "deploy", "dev", "podman.sh"), "conf").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
