package runner

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/runner/runnertest"
	"buko.app/agentrunner/vault"
)

const testAdminToken = "admin-secret-0123456789"

// adminClient records every response (headers and bodies) for the
// no-token-anywhere check.
type adminClient struct {
	t    *testing.T
	base string
	hc   *http.Client
	mu   sync.Mutex
	seen strings.Builder
}

func newAdminServer(t *testing.T, env *runnertest.Env, sup *Supervisor, token string) *adminClient {
	t.Helper()
	reg := prometheus.NewRegistry()
	a := NewAdmin(AdminConfig{
		Pool: env.Pool, Supervisor: sup, Gatherer: reg, Token: token,
		Registry: NewRegistry(RegistryConfig{Pool: env.Pool, Store: env.Store, Buko: buko.NewClient(env.SimURL, nil), Logger: testLogger(t)}),
		Ready:    []ReadyCheck{{Name: "fake", Check: func(context.Context) error { return nil }}},
		Logger:   testLogger(t),
	})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return &adminClient{t: t, base: srv.URL, hc: &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// do sends a request; auth "" sends none.
func (c *adminClient) do(method, path, auth, body string) (int, http.Header, string) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	for k, vs := range resp.Header {
		c.seen.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
	}
	c.seen.Write(data)
	c.mu.Unlock()
	return resp.StatusCode, resp.Header, string(data)
}

func (c *adminClient) expect(method, path, auth, body string, want int) string {
	c.t.Helper()
	code, _, out := c.do(method, path, auth, body)
	if code != want {
		c.t.Fatalf("%s %s: HTTP %d, want %d: %.400s", method, path, code, want, out)
	}
	return out
}

func botTokens(t *testing.T, env *runnertest.Env, bots []runnertest.Bot) []string {
	t.Helper()
	cache := vault.NewCache(env.Store, vault.CacheOptions{Actor: "test"})
	var out []string
	for _, b := range bots {
		cred, err := cache.Token(context.Background(), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, cred.Reveal())
	}
	return out
}

func TestAdminAPIAndPage(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 4, "adm")
	tokens := botTokens(t, env, bots)
	ts := startSupervisor(t, env, "a")
	c := newAdminServer(t, env, ts.sup, testAdminToken)

	// Health, readiness, metrics: no auth.
	c.expect("GET", "/healthz", "", "", 200)
	waitFor(t, "readyz 200", 30*time.Second, func() bool { code, _, _ := c.do("GET", "/readyz", "", ""); return code == 200 })
	c.expect("GET", "/metrics", "", "", 200)

	// Auth required for the API and the page.
	c.expect("GET", "/api/v1/bots", "", "", 401)
	c.expect("GET", "/api/v1/bots", "wrong", "", 401)
	if out := c.expect("GET", "/", "", "", 401); !strings.Contains(out, `name="token"`) {
		t.Fatalf("page without auth: no login form: %.300s", out)
	}

	// Every bot live, owned by a, reported from memory.
	var list struct{ Bots []BotView }
	waitFor(t, "every bot live in the API", 60*time.Second, func() bool {
		if err := json.Unmarshal([]byte(c.expect("GET", "/api/v1/bots", testAdminToken, "", 200)), &list); err != nil {
			t.Fatal(err)
		}
		live := 0
		for _, b := range list.Bots {
			if b.State == "live" && b.Owner == "a" && b.Epoch > 0 {
				live++
			}
		}
		return live == len(bots)
	})
	// The persisted state (fenced, throttled) follows.
	waitFor(t, "bot_status rows for every bot", 30*time.Second, func() bool {
		var n int
		if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM bot_status WHERE state = 'live' AND owner = 'a'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == len(bots)
	})
	// A replica running no sessions shows the same from the database.
	other := newAdminServer(t, env, nil, testAdminToken)
	if err := json.Unmarshal([]byte(other.expect("GET", "/api/v1/bots", testAdminToken, "", 200)), &list); err != nil {
		t.Fatal(err)
	}
	for _, b := range list.Bots {
		if b.State != "live" || b.Source != "db" {
			t.Fatalf("bot %s from the database: state %q source %q, want live from db", b.ID, b.State, b.Source)
		}
	}

	// Filter, one bot, runners, shards.
	if err := json.Unmarshal([]byte(c.expect("GET", "/api/v1/bots?q=adm1", testAdminToken, "", 200)), &list); err != nil || len(list.Bots) != 1 {
		t.Fatalf("filter q=adm1: %d bots, err %v", len(list.Bots), err)
	}
	target := bots[2]
	c.expect("GET", "/api/v1/bots/"+target.ID, testAdminToken, "", 200)
	c.expect("GET", "/api/v1/bots/nope", testAdminToken, "", 404)
	c.expect("GET", "/api/v1/bots/"+url.PathEscape("bad id"), testAdminToken, "", 400)
	c.expect("GET", "/api/v1/nothing", testAdminToken, "", 404)
	if out := c.expect("GET", "/api/v1/runners", testAdminToken, "", 200); !strings.Contains(out, `"id": "a"`) {
		t.Fatalf("runners: %s", out)
	}
	c.expect("GET", "/api/v1/shards", testAdminToken, "", 200)

	// Writes: bearer only, bodies checked.
	pause := "/api/v1/bots/" + target.ID + "/pause"
	c.expect("POST", pause, "", "", 401)
	c.expect("POST", pause, testAdminToken, "{not json", 400)
	c.expect("POST", pause, testAdminToken, `{"reason": 5}`, 400)
	c.expect("POST", pause, testAdminToken, `{"why": "x"}`, 400)
	c.expect("POST", pause, testAdminToken, `{"reason": "a"} {}`, 400)
	c.expect("POST", "/api/v1/bots/nope/pause", testAdminToken, "", 404)
	c.expect("GET", pause, testAdminToken, "", 405)
	c.expect("POST", pause, testAdminToken, `{"reason": "test"}`, 200)
	waitFor(t, "paused bot disconnected", 30*time.Second, func() bool {
		live, _ := env.Live(t, map[string]bool{target.ID: true})
		return live == 0
	})
	c.expect("POST", "/api/v1/bots/"+target.ID+"/resume", testAdminToken, "", 200)
	waitFor(t, "resumed bot live", 30*time.Second, func() bool {
		live, _ := env.Live(t, map[string]bool{target.ID: true})
		return live == 1
	})
	var audits int
	if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE bot_id = $1 AND action IN ('bot.pause', 'bot.resume') AND actor LIKE 'admin-api:%'`, target.ID).Scan(&audits); err != nil || audits != 2 {
		t.Fatalf("audit rows for pause/resume: %d, %v", audits, err)
	}

	// Reconnect here, then through the other replica (NOTIFY to the owner).
	waitFor(t, "resumed bot live in the API", 30*time.Second, func() bool {
		var d BotDetail
		_ = json.Unmarshal([]byte(c.expect("GET", "/api/v1/bots/"+target.ID, testAdminToken, "", 200)), &d)
		return d.State == "live"
	})
	c.expect("POST", "/api/v1/bots/"+target.ID+"/reconnect", testAdminToken, "", 202)
	other.expect("POST", "/api/v1/bots/"+bots[0].ID+"/reconnect", testAdminToken, `{"reason":"stuck"}`, 202)
	for _, b := range []runnertest.Bot{target, bots[0]} {
		waitFor(t, "admin reconnect recorded for "+b.Handle, 30*time.Second, func() bool {
			var d BotDetail
			_ = json.Unmarshal([]byte(c.expect("GET", "/api/v1/bots/"+b.ID, testAdminToken, "", 200)), &d)
			for _, e := range d.Events {
				if e.Kind == "reconnect" && e.Cause == "admin" {
					return true
				}
			}
			return false
		})
	}

	// The page: ?token= once sets the cookie; the table lists every bot.
	code, hdr, _ := c.do("GET", "/?token="+testAdminToken, "", "")
	if code != http.StatusSeeOther || !strings.Contains(hdr.Get("Set-Cookie"), "HttpOnly") || !strings.Contains(hdr.Get("Set-Cookie"), "SameSite=Strict") {
		t.Fatalf("?token=: HTTP %d, Set-Cookie %q", code, hdr.Get("Set-Cookie"))
	}
	page := c.expect("GET", "/", testAdminToken, "", 200)
	for _, b := range bots {
		if !strings.Contains(page, "@"+b.Handle) {
			t.Fatalf("page does not list @%s", b.Handle)
		}
	}
	c.expect("GET", "/bots/"+target.ID, testAdminToken, "", 200)
	c.expect("GET", "/bots/nope", testAdminToken, "", 404)
	c.expect("POST", "/login", "", "token=wrong", 401)

	// Without an admin token, writes are refused.
	open := newAdminServer(t, env, ts.sup, "")
	if out := open.expect("POST", pause, "", "", 403); !strings.Contains(out, "no admin token") {
		t.Fatalf("write without a configured token: %s", out)
	}
	open.expect("GET", "/api/v1/bots", "", "", 200)

	// Drain: the runner releases its shards and stops being ready.
	c.expect("POST", "/api/v1/runners/nope/drain", testAdminToken, "", 404)
	other.expect("POST", "/api/v1/runners/a/drain", testAdminToken, "", 202)
	waitFor(t, "drained runner holds nothing", 30*time.Second, func() bool {
		return len(ts.sup.Shards().Held()) == 0 && ts.running() == 0
	})
	c.expect("GET", "/readyz", "", "", 503)

	// No token, bot or admin, in anything any endpoint answered.
	for _, cl := range []*adminClient{c, other, open} {
		cl.mu.Lock()
		all := cl.seen.String()
		cl.mu.Unlock()
		for i, tok := range tokens {
			if strings.Contains(all, tok) {
				t.Fatalf("bot %d's token appears in an admin response", i)
			}
		}
		if strings.Contains(all, testAdminToken) {
			t.Fatal("the admin token appears in an admin response")
		}
	}
}
