package devstack

// temporal.go runs the Temporal dev server as a child process, persistent
// in the data folder.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"buko.app/agentrunner/workflows"
)

// temporalStopGrace is how long the child has after SIGTERM before SIGKILL.
const temporalStopGrace = 15 * time.Second

// Temporal configures the child Temporal dev server.
type Temporal struct {
	Bin       string // the temporal CLI ("": found on PATH)
	Port      int    // its gRPC port (taken: a free one; 0: always a free one)
	DataDir   string // its database and log go here
	Namespace string // the namespace that must answer before it counts as up
}

// errTemporalExited means the Temporal child exited before it answered; most
// often one of the ports picked for it was taken in the meantime.
var errTemporalExited = errors.New("the Temporal dev server exited at start")

// Start starts `temporal server start-dev` persistent in the data folder
// and waits until its namespace answers, trying other ports when the child
// exits at start. stop (non-nil once a process started) ends it and waits
// for it.
func (t Temporal) Start(ctx context.Context, log zerolog.Logger) (stop func(), addr string, err error) {
	for attempt := 1; ; attempt++ {
		stop, addr, err = t.startOnce(ctx, log)
		if err == nil || !errors.Is(err, errTemporalExited) || attempt == 3 {
			return stop, addr, err
		}
		stop()
		log.Warn().Err(err).Int("attempt", attempt).Msg("retrying the Temporal dev server on other ports")
	}
}

func (t Temporal) startOnce(ctx context.Context, log zerolog.Logger) (stop func(), addr string, err error) {
	bin := t.Bin
	if bin == "" {
		if bin, err = exec.LookPath("temporal"); err != nil {
			return nil, "", &SettingError{errors.New("no temporal CLI: set AGENTRUNNER_TEMPORAL_BIN (make services builds one) or TEMPORAL_ADDRESS to use a running server")}
		}
	}
	ports, err := freePorts(t.Port, 0, 0)
	if err != nil {
		return nil, "", fmt.Errorf("a port for Temporal: %w", err)
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	logPath := filepath.Join(t.DataDir, "temporal.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("temporal log: %w", err)
	}
	c := exec.Command(bin, t.args(ports)...)
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
	stop = func() { stopGroup(c.Process.Pid, exited, log) }
	log.Info().Str("addr", addr).Str("log", logPath).Msg("starting the Temporal dev server")
	return stop, addr, t.awaitAnswer(ctx, addr, logPath, exited, log)
}

// args is the child's command line, on the gRPC, HTTP and metrics ports.
func (t Temporal) args(ports []int) []string {
	return []string{"server", "start-dev", "--headless", "--ip", "127.0.0.1",
		"--port", strconv.Itoa(ports[0]), "--http-port", strconv.Itoa(ports[1]), "--metrics-port", strconv.Itoa(ports[2]),
		"--log-level", "warn",
		"--db-filename", filepath.Join(t.DataDir, "temporal.db"),
		"--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
		"--dynamic-config-value", `history.timerProcessorMaxTimeShift="100ms"`,
		"--dynamic-config-value", "history.transferProcessorMaxPollRPS=2000",
		"--dynamic-config-value", "history.timerProcessorMaxPollRPS=2000",
	}
}

// stopGroup sends SIGTERM to the child's process group and waits for it to
// exit, with SIGKILL after temporalStopGrace.
func stopGroup(pid int, exited <-chan struct{}, log zerolog.Logger) {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	grace := time.NewTimer(temporalStopGrace)
	defer grace.Stop()
	select {
	case <-exited:
	case <-grace.C:
		log.Warn().Msg("Temporal did not stop in time: killing it")
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-exited
	}
	log.Info().Msg("Temporal dev server stopped")
}

// awaitAnswer polls until the namespace answers at addr, the child exits,
// ctx ends or two minutes pass.
func (t Temporal) awaitAnswer(ctx context.Context, addr, logPath string, exited <-chan struct{}, log zerolog.Logger) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if temporalAnswers(ctx, addr, t.Namespace) {
			log.Info().Str("addr", addr).Msg("Temporal answers")
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%w (see %s)", errTemporalExited, logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the Temporal dev server did not answer on %s within 2 minutes (see %s)", addr, logPath)
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

// freePorts returns, for each wanted port, that port if it can be listened
// on at 127.0.0.1, else a free one (0: always a free one).
func freePorts(want ...int) ([]int, error) {
	out := make([]int, len(want))
	for i, w := range want {
		p, err := freePort(w)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
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
