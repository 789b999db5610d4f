// Package browser owns headless Chromium for the tests of agentrunner's web
// pages: the simulator's chat page (buko/sim/web) and the admin status page
// (runner). [New] starts a Chromium with a fresh profile for one test; its
// steps fail the test with a screenshot and the page's console, uncaught
// JavaScript exceptions fail the test, screenshots are PNGs saved to
// $AGENTRUNNER_TEST_ARTIFACTS (default test-artifacts/ at the repo root), and
// at cleanup every Chromium process of the profile must have exited.
//
// Without Chromium a test skips, and fails instead under CI (see [Require]
// and internal/testsupport).
package browser

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"buko.app/agentrunner/internal/testsupport"
)

// ChromiumPath is where deploy/dev/chromium.sh (run by `make services`) puts
// Debian's Chromium.
const ChromiumPath = "/usr/bin/chromium"

// StepTimeout bounds one browser step; generous, so a loaded machine is only
// slow.
const StepTimeout = 90 * time.Second

// Window size of a new browser.
const (
	width  = 1200
	height = 800
)

// Missing says why there is no usable Chromium, or returns nil.
func Missing() error {
	if _, err := os.Stat(ChromiumPath); err != nil {
		return fmt.Errorf("no Chromium at %s: %w", ChromiumPath, err)
	}
	return nil
}

// InCI reports whether the tests run under CI: [testsupport.CI].
func InCI() bool { return testsupport.CI() }

// Require skips the test when Chromium is missing, or fails it under CI.
func Require(t testing.TB) {
	t.Helper()
	testsupport.Require(t, "Chromium", Missing(), "install it with `bash deploy/dev/chromium.sh` (part of `make services`)")
}

// Browser is one headless Chromium with one tab, owned by one test.
type Browser struct {
	t   testing.TB
	ctx context.Context

	mu      sync.Mutex
	console []chromedp.ConsoleMessage // what the pages wrote to their console
}

// New starts a headless Chromium with a fresh profile for t (after [Require])
// and closes it at t's cleanup, where it also fails t if a page threw an
// exception nothing caught or if a Chromium process outlives the browser.
func New(t testing.TB) *Browser {
	t.Helper()
	Require(t)
	profile, err := os.MkdirTemp("", "agentrunner-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ChromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(width, height),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	b := &Browser{t: t, ctx: ctx}
	consoleDone := make(chan struct{})
	t.Cleanup(func() {
		b.NoExceptions()
		done, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := chromedp.Cancel(done); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("closing the browser: %v", err)
		}
		cancelCtx()
		cancelAlloc() // waits for the browser process to be reaped
		<-consoleDone
		if left := processesUsing(profile, 10*time.Second); len(left) > 0 {
			t.Errorf("browser processes left behind: %v (killed)", left)
		}
		if err := os.RemoveAll(profile); err != nil {
			t.Errorf("removing the browser profile: %v", err)
		}
	})
	// The first run starts the browser; it lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		close(consoleDone)
		t.Fatalf("starting %s: %v", ChromiumPath, err)
	}
	console := chromedp.Console(ctx)
	go func() {
		defer close(consoleDone)
		for m, err := range console {
			if err != nil {
				return // the browser is closing
			}
			b.mu.Lock()
			b.console = append(b.console, m)
			b.mu.Unlock()
		}
	}()
	return b
}

// NoExceptions fails the test (without stopping it) for each exception a page
// threw that nothing caught; New's cleanup calls it too.
func (b *Browser) NoExceptions() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range b.console {
		if m.IsException() {
			b.t.Errorf("the page threw: %s (%s:%d)", m.Text, m.URL, m.Line)
		}
	}
	b.console = nil // each one is reported once
}

// Do runs browser steps, failing the test (with a screenshot) on error.
func (b *Browser) Do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.fail(what, err)
	}
}

// WaitFn waits until the JavaScript function fn, called with args, returns a
// truthy value.
func (b *Browser) WaitFn(what, fn string, args ...any) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.PollFunction[chromedp.Void](fn,
		chromedp.WithPollingInterval(25*time.Millisecond),
		chromedp.WithPollingTimeout(0), // ctx bounds it
		chromedp.WithPollingArgs(args...)))
	if err != nil {
		b.fail("waiting for "+what, err)
	}
}

// WaitString waits until the JavaScript function fn, called with args,
// returns a non-empty string, and returns it (fn returns false meanwhile).
func (b *Browser) WaitString(what, fn string, args ...any) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.PollFunction[string](fn,
		chromedp.WithPollingInterval(25*time.Millisecond),
		chromedp.WithPollingTimeout(0),
		chromedp.WithPollingArgs(args...)))
	if err == nil && v == "" {
		err = errors.New("the page function returned an empty string")
	}
	if err != nil {
		b.fail("waiting for "+what, err)
	}
	return v
}

// UntilShown calls trigger until the JavaScript function fn returns a truthy
// value: for states that expire, such as a chat action, so a slow machine only
// needs more rounds.
func (b *Browser) UntilShown(what string, trigger func(), fn string) {
	b.t.Helper()
	deadline := time.Now().Add(StepTimeout)
	for {
		trigger()
		ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
		_, err := chromedp.Run(ctx, chromedp.PollFunction[chromedp.Void](fn,
			chromedp.WithPollingInterval(25*time.Millisecond),
			chromedp.WithPollingTimeout(2*time.Second)))
		cancel()
		if err == nil {
			return
		}
		if !errors.Is(err, chromedp.ErrPollingTimeout) || time.Now().After(deadline) {
			b.fail("waiting for "+what, err)
		}
	}
}

// LoadUntil opens url until the JavaScript function fn, called with args on
// the loaded page, returns a truthy value: for server-rendered pages that
// show new state only when loaded again.
func (b *Browser) LoadUntil(what, url, fn string, args ...any) {
	b.t.Helper()
	deadline := time.Now().Add(StepTimeout)
	for {
		b.Do("open "+url, chromedp.Navigate(url))
		ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
		_, err := chromedp.Run(ctx, chromedp.PollFunction[chromedp.Void](fn,
			chromedp.WithPollingInterval(25*time.Millisecond),
			chromedp.WithPollingTimeout(500*time.Millisecond),
			chromedp.WithPollingArgs(args...)))
		cancel()
		if err == nil {
			return
		}
		if !errors.Is(err, chromedp.ErrPollingTimeout) || time.Now().After(deadline) {
			b.fail("waiting for "+what, err)
		}
	}
}

// Eval evaluates a JavaScript expression that yields a string.
func (b *Browser) Eval(expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		b.fail("evaluating "+expr, err)
	}
	return v
}

// Screenshot saves a PNG of the whole page (beyond the viewport) as name in
// the artifacts folder and returns its path.
func (b *Browser) Screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(ArtifactsDir(b.t), name)
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatalf("saving the screenshot: %v", err)
	}
	b.t.Logf("screenshot: %s", p)
	return p
}

// fail logs what the page showed, saves a screenshot named after the test,
// and stops the test.
func (b *Browser) fail(what string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
	defer cancel()
	b.mu.Lock()
	for _, m := range b.console {
		b.t.Logf("page console: %s", m)
	}
	b.mu.Unlock()
	if loc, e := chromedp.Run(ctx, chromedp.Location()); e == nil {
		b.t.Logf("page address: %s", loc)
	}
	if status, e := chromedp.Run(ctx, chromedp.Evaluate[string](
		`[...document.querySelectorAll('[role=status], [role=alert]')].map(e => e.textContent.trim()).filter(Boolean).join(' | ')`)); e == nil && status != "" {
		b.t.Logf("page status: %s", status)
	}
	if png, e := chromedp.Run(ctx, chromedp.FullScreenshot(100)); e == nil {
		p := filepath.Join(ArtifactsDir(b.t), fileName(b.t.Name())+"-failure.png")
		if os.WriteFile(p, png, 0o644) == nil {
			b.t.Logf("failure screenshot: %s", p)
		}
	}
	b.t.Fatalf("%s: %v", what, err)
}

// fileName turns a test name into a file name.
func fileName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '-'
	}, s)
}

// ArtifactsDir is $AGENTRUNNER_TEST_ARTIFACTS, or test-artifacts/ at the repo
// root (the folder above the working directory that holds go.mod), created.
func ArtifactsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("AGENTRUNNER_TEST_ARTIFACTS")
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		root := wd
		for {
			if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
				break
			}
			up := filepath.Dir(root)
			if up == root {
				root = wd
				break
			}
			root = up
		}
		dir = filepath.Join(root, "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts folder: %v", err)
	}
	return dir
}

// processesUsing waits up to limit for every process whose command line names
// the profile directory to exit, then kills and returns the ones that did not.
func processesUsing(profile string, limit time.Duration) []int {
	want := []byte("--user-data-dir=" + profile)
	find := func() []int {
		entries, err := os.ReadDir("/proc")
		if err != nil {
			return nil
		}
		var pids []int
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err == nil && bytes.Contains(cmd, want) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	deadline := time.Now().Add(limit)
	for {
		pids := find()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				if p, err := os.FindProcess(pid); err == nil {
					_ = p.Kill()
				}
			}
			return pids
		}
		time.Sleep(50 * time.Millisecond)
	}
}
