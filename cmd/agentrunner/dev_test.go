package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/buko/sim/web/browser"
	"buko.app/agentrunner/devstack"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/migrations/pgtest"
)

// lockedBuf is an io.Writer several goroutines may write.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestDevEndToEnd builds the binary and runs `agentrunner dev` as a child
// process on a fresh database, a temp data folder and free ports: the seeded
// echo bot answers a message posted through the simulator's control API, the
// http bot answers through the example agent, and SIGINT stops the process
// and its Temporal child within a deadline.
func TestDevEndToEnd(t *testing.T) {
	bin := os.Getenv("AGENTRUNNER_TEMPORAL_BIN")
	if bin == "" {
		if p, err := exec.LookPath("temporal"); err == nil {
			bin = p
		}
	}
	if bin == "" {
		testsupport.Unavailable(t, "the Temporal CLI", "$AGENTRUNNER_TEMPORAL_BIN is not set and no temporal on PATH", testsupport.ServicesHint)
	}
	dsn := pgtest.NewEmpty(t)
	dir := t.TempDir()
	exe := filepath.Join(dir, "agentrunner")
	build := exec.Command("go", "build", "-o", exe, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(exe, "dev", "--temporal-port", "0")
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "AGENTRUNNER_") || strings.HasPrefix(k, "VAULT_") || strings.HasPrefix(k, "TEMPORAL_") ||
			strings.HasPrefix(k, "BUKO_") || k == "DATABASE_URL" || k == "XDG_DATA_HOME" {
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env,
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"DATABASE_URL="+dsn,
		"AGENTRUNNER_TEMPORAL_BIN="+bin,
		// Port 0: dev binds, then names the addresses in its banner.
		"AGENTRUNNER_SIM_ADDR=127.0.0.1:0",
		"AGENTRUNNER_ADMIN_ADDR=127.0.0.1:0",
		"AGENTRUNNER_LOG_FORMAT=json",
	)
	out := &lockedBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("dev output:\n%s", out.String())
		}
	})

	// The banner names the seeded chats.
	chatRE := regexp.MustCompile(`bot @(\w+) \((\w+)\): bot_id (\S+), chat (\S+)`)
	// running fails t at once when dev has exited.
	running := func(when string) {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("dev exited %s: %v", when, err)
		default:
		}
	}
	chats := map[string][2]string{} // handle → bot id, chat id
	testsupport.Within(t, "the banner", 3*time.Minute, func() bool {
		running("early")
		m := chatRE.FindAllStringSubmatch(out.String(), -1)
		for _, x := range m {
			chats[x[1]] = [2]string{x[3], x[4]}
		}
		return len(m) == 2
	})
	banner := func(re string) string {
		m := regexp.MustCompile(re).FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("the banner has no match for %s", re)
		}
		return m[1]
	}
	simAddr := banner(`chat here:\s+http://(127\.0\.0\.1:\d+)/`)
	adminAddr := banner(`look here:\s+http://(127\.0\.0\.1:\d+)/`)
	m := regexp.MustCompile(`Temporal:\s+127\.0\.0\.1:(\d+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatal("the banner names no Temporal address")
	}
	temporalPort, _ := strconv.Atoi(m[1])

	simURL := "http://" + simAddr
	sc := sim.NewControl(simURL, sim.ControlOptions{})
	user, err := sc.CreateUser(context.Background(), "Tester", "")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for handle, want := range map[string]string{devstack.EchoHandle: "hello dev", devstack.HTTPHandle: "The example agent got 2 word(s)"} {
		ids := chats[handle]
		chat, err := sc.OpenPrivateChat(context.Background(), user.UserID, ids[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sc.Say(context.Background(), chat.ChatID, user.UserID, "hello dev"); err != nil {
			t.Fatal(err)
		}
		testsupport.Until(t, fmt.Sprintf("@%s's reply starting %q", handle, want), 3*time.Minute, func() (bool, string) {
			running("while waiting for a reply")
			msgs, _ := sc.Transcript(context.Background(), chat.ChatID, "")
			for _, m := range msgs {
				if m.FromKind == "bot" && strings.HasPrefix(m.Text, want) {
					return true, ""
				}
			}
			return false, fmt.Sprintf("transcript %+v", msgs)
		})
		t.Logf("@%s answered after %s", handle, time.Since(start).Round(time.Millisecond))
	}

	// The admin API takes writes with the token dev made, and only with it.
	tok, err := os.ReadFile(filepath.Join(dir, "data", "agentrunner", "dev", "admin-token"))
	if err != nil || len(bytes.TrimSpace(tok)) == 0 {
		t.Fatalf("admin token file: %v", err)
	}
	if strings.Contains(out.String(), strings.TrimSpace(string(tok))) {
		t.Fatal("dev printed its admin token")
	}

	// What a person sees: the simulator page and the status page in a real
	// browser (skipped without Chromium, failed then under CI).
	t.Run("browser", func(t *testing.T) {
		devBrowser(t, simURL, "http://"+adminAddr, strings.TrimSpace(string(tok)), chats[devstack.EchoHandle][1])
	})
	running("during the browser check")
	pause := func(token string) int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/api/v1/bots/"+chats[devstack.EchoHandle][0]+"/pause", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := pause(""); code != http.StatusUnauthorized && code != http.StatusForbidden {
		t.Fatalf("pause without the token: %d", code)
	}
	if code := pause(strings.TrimSpace(string(tok))); code != http.StatusOK {
		t.Fatalf("pause with the token: %d", code)
	}

	// SIGINT stops everything, the Temporal child included.
	stopAt := time.Now()
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = testsupport.ReceiveWithin(t, "dev to stop after SIGINT", 60*time.Second, exited)
	stopped = true
	if err != nil {
		t.Fatalf("dev after SIGINT: %v", err)
	}
	t.Logf("dev stopped %s after SIGINT", time.Since(stopAt).Round(time.Millisecond))
	for _, addr := range []string{simAddr, adminAddr, net.JoinHostPort("127.0.0.1", strconv.Itoa(temporalPort))} {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still answers after dev stopped", addr)
		}
	}
	if b, err := exec.Command("pgrep", "-f", filepath.Join(dir, "data")).Output(); err == nil && len(bytes.TrimSpace(b)) > 0 {
		t.Errorf("processes left behind using the data folder: %s", b)
	}
}

// devBrowser checks in headless Chromium what `make dev` promises a person: on
// the simulator page at simURL the seeded Demo User's chat with @echo_bot
// (echoChat) gets the echo bot's reply to a typed message, and the status page
// at adminURL, signed in with dev's admin token, lists both demo bots as live.
// It saves the screenshots dev-chat.png and dev-status.png.
func devBrowser(t *testing.T, simURL, adminURL, token, echoChat string) {
	b := browser.New(t)
	b.Do("open the simulator page", chromedp.Navigate(simURL+"/"))
	b.WaitFn("the page to start", `() => document.body.dataset.ready === 'true'`)
	userID := b.WaitString("the Demo User in the user list", `(name) => {
		const o = [...document.querySelectorAll('#user-select option')].find(o => o.textContent.startsWith(name));
		return o ? o.value : false;
	}`, devstack.UserName)
	b.Do("pick the Demo User", chromedp.SetValue(chromedp.ID("user-select"), userID))
	b.WaitFn("the Demo User to be picked",
		`(name) => document.getElementById('current-user').textContent.includes(name)`, devstack.UserName)

	chat := browser.TestID("chat-" + echoChat)
	b.WaitFn("the chat with @echo_bot in the chat list", `(sel) => !!document.querySelector(sel)`, chat)
	b.Do("open the chat with @echo_bot",
		chromedp.Click(chromedp.CSS(chat)),
		chromedp.WaitVisible(chromedp.ID("composer-text")),
	)
	b.WaitFn("the chat to be the open one",
		`(sel) => document.querySelector(sel).classList.contains('active')`, chat)

	const text = "hello from the browser"
	b.Do("type and send a message",
		chromedp.SendKeys(chromedp.ID("composer-text"), text),
		chromedp.Click(chromedp.ID("send")),
	)
	b.WaitChatMessage("the sent message", "user", text)
	reply := b.WaitChatMessage("the echo bot's reply", "bot", text)
	b.WaitFn("the reply to quote the sent message", `(id, text) => {
		const q = document.querySelector('[data-testid="quote-' + id + '"]');
		return q && q.textContent.includes(text);
	}`, reply, text)
	b.Screenshot("dev-chat.png")

	b.SignIn(adminURL, token)
	b.WaitBotStates(adminURL, map[string]string{devstack.EchoHandle: "live", devstack.HTTPHandle: "live"})
	b.Screenshot("dev-status.png")
}
