package runner

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"buko.app/agentrunner/runner/runnertest"
)

const adminChromium = "/usr/bin/chromium"

// TestAdminStatusPageInChromium loads the status page against a running
// supervisor in headless Chromium, signs in with the form, checks the bot
// table and saves a screenshot to $AGENTRUNNER_TEST_ARTIFACTS/status.png
// (default test-artifacts/ at the repo root).
func TestAdminStatusPageInChromium(t *testing.T) {
	if _, err := os.Stat(adminChromium); err != nil {
		if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
			t.Fatalf("CI: %s is missing (%v)", adminChromium, err)
		}
		t.Skipf("SKIPPING the status page browser test: %s is missing (%v); install Debian's chromium", adminChromium, err)
	}
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 5, "page")
	ts := startSupervisor(t, env, "page-a")
	c := newAdminServer(t, env, ts.sup, testAdminToken)
	waitFor(t, "every bot live", 60*time.Second, func() bool {
		live, _ := env.Live(t, runnertest.IDs(bots))
		return live == len(bots)
	})
	// A paused bot shows up too.
	c.expect("POST", "/api/v1/bots/"+bots[4].ID+"/pause", testAdminToken, "", 200)

	profile, err := os.MkdirTemp("", "admin-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(profile) })
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(adminChromium), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(profile), chromedp.WindowSize(1100, 760))
	defer cancelAlloc()
	bctx, cancelB := chromedp.NewContext(allocCtx)
	defer func() {
		_ = chromedp.Cancel(bctx)
		cancelB()
	}()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()

	// Sign in with the form.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(c.base+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), testAdminToken),
		chromedp.Submit(chromedp.ID("token")),
		chromedp.WaitVisible(chromedp.ID("bots")),
	); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	// The table lists every bot, live ones as live (reload until the page says so).
	waitFor(t, "the bot table to show every bot live or paused", 60*time.Second, func() bool {
		if err := chromedp.Do(ctx, chromedp.Navigate(c.base+"/"), chromedp.WaitVisible(chromedp.ID("bots"))); err != nil {
			t.Fatalf("reload: %v", err)
		}
		text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#bots tbody")))
		if err != nil {
			t.Fatalf("read the table: %v", err)
		}
		for _, b := range bots {
			if !strings.Contains(text, "@"+b.Handle) {
				return false
			}
		}
		return strings.Count(text, "live") >= len(bots)-1 && strings.Contains(text, "paused")
	})
	if loc, err := chromedp.Run(ctx, chromedp.Location()); err != nil || strings.Contains(loc, testAdminToken) {
		t.Fatalf("the token is in the address bar (%v)", err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("AGENTRUNNER_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "status.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)

	// The bot page, on a phone.
	if err := chromedp.Do(ctx,
		chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile),
		chromedp.Navigate(c.base+"/bots/"+bots[0].ID),
		chromedp.WaitVisible(chromedp.ID("events")),
	); err != nil {
		t.Fatalf("bot page: %v", err)
	}
	if png, err = chromedp.Run(ctx, chromedp.FullScreenshot(100)); err != nil {
		t.Fatalf("bot page screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status-bot-phone.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}
