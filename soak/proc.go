package soak

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process of the soak, restartable: each start appends to
// the same log file, so a restarted component keeps one log.
type proc struct {
	name    string
	logPath string
	mk      func() *exec.Cmd // a fresh command for each start

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func newProc(name, logPath string, mk func() *exec.Cmd) *proc {
	return &proc{name: name, logPath: logPath, mk: mk}
}

// start runs the process; it is an error to start a running one.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !p.exitedLocked() {
		return fmt.Errorf("%s: already running", p.name)
	}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("%s: log: %w", p.name, err)
	}
	cmd := p.mk()
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group, and killed with the soak if the soak dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return fmt.Errorf("%s: start: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.err = cmd, done, nil
	go func() {
		err := cmd.Wait()
		_ = f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func (p *proc) exitedLocked() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// running reports whether the process was started and has not exited.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.exitedLocked()
}

// signal sends sig to the process (not its group: children of its own, like
// postgres's, are the process's business).
func (p *proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil && !p.exitedLocked() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// wait waits for the process to exit, at most d.
func (p *proc) wait(ctx context.Context, d time.Duration) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("%s did not exit within %s", p.name, d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop sends SIGTERM, and SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	if !p.running() {
		return
	}
	p.signal(syscall.SIGTERM)
	if p.wait(context.Background(), grace) != nil {
		p.signal(syscall.SIGKILL)
		_ = p.wait(context.Background(), 10*time.Second)
	}
}

// kill9 ends the process at once, as a crash would.
func (p *proc) kill9() {
	p.signal(syscall.SIGKILL)
	_ = p.wait(context.Background(), 10*time.Second)
}

// freePorts returns n free loopback ports, consecutive when consecutive is
// set (the Temporal server wants a base and offsets).
func freePorts(n int, consecutive bool) ([]int, error) {
	if !consecutive {
		var out []int
		var lns []net.Listener
		defer func() {
			for _, l := range lns {
				_ = l.Close()
			}
		}()
		for range n {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("free port: %w", err)
			}
			lns = append(lns, l)
			out = append(out, l.Addr().(*net.TCPAddr).Port)
		}
		return out, nil
	}
	for try := 0; try < 200; try++ {
		// Below 32768: Temporal stores membership ports as a smallint.
		base := 20000 + int(time.Now().UnixNano()%12000)
		var lns []net.Listener
		ok := true
		for i := range n {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, l)
		}
		for _, l := range lns {
			_ = l.Close()
		}
		if ok {
			out := make([]int, n)
			for i := range out {
				out[i] = base + i
			}
			return out, nil
		}
	}
	return nil, errors.New("no range of free consecutive ports found")
}

// run runs a short command and returns its combined output in the error.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(lastLines(string(out), 10)))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
