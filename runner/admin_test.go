package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/migrations/pgtest"
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
	if method == http.MethodPost && path == "/login" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
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
	testsupport.Within(t, "readyz 200", 30*time.Second, func() bool { code, _, _ := c.do("GET", "/readyz", "", ""); return code == 200 })
	c.expect("GET", "/metrics", "", "", 200)

	// Auth required for the API and the page.
	c.expect("GET", "/api/v1/bots", "", "", 401)
	c.expect("GET", "/api/v1/bots", "wrong", "", 401)
	if out := c.expect("GET", "/", "", "", 401); !strings.Contains(out, `name="token"`) {
		t.Fatalf("page without auth: no login form: %.300s", out)
	}

	// Every bot live, owned by a, reported from memory.
	var list struct{ Bots []BotView }
	testsupport.Within(t, "every bot live in the API", 60*time.Second, func() bool {
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
	testsupport.Within(t, "bot_status rows for every bot", 30*time.Second, func() bool {
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
	testsupport.Within(t, "paused bot disconnected", 30*time.Second, func() bool {
		live, _ := env.Live(t, map[string]bool{target.ID: true})
		return live == 0
	})
	c.expect("POST", "/api/v1/bots/"+target.ID+"/resume", testAdminToken, "", 200)
	testsupport.Within(t, "resumed bot live", 30*time.Second, func() bool {
		live, _ := env.Live(t, map[string]bool{target.ID: true})
		return live == 1
	})
	var audits int
	if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE bot_id = $1 AND action IN ('bot.pause', 'bot.resume') AND actor LIKE 'admin-api:%'`, target.ID).Scan(&audits); err != nil || audits != 2 {
		t.Fatalf("audit rows for pause/resume: %d, %v", audits, err)
	}

	// Reconnect here, then through the other replica (NOTIFY to the owner).
	testsupport.Within(t, "resumed bot live in the API", 30*time.Second, func() bool {
		var d BotDetail
		_ = json.Unmarshal([]byte(c.expect("GET", "/api/v1/bots/"+target.ID, testAdminToken, "", 200)), &d)
		return d.State == "live"
	})
	c.expect("POST", "/api/v1/bots/"+target.ID+"/reconnect", testAdminToken, "", 202)
	other.expect("POST", "/api/v1/bots/"+bots[0].ID+"/reconnect", testAdminToken, `{"reason":"stuck"}`, 202)
	for _, b := range []runnertest.Bot{target, bots[0]} {
		testsupport.Within(t, "admin reconnect recorded for "+b.Handle, 30*time.Second, func() bool {
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

	// The page: the login form's POST sets the cookie; the table lists every bot.
	code, hdr, _ := c.do("POST", "/login", "", "token="+testAdminToken)
	if code != http.StatusSeeOther || !strings.Contains(hdr.Get("Set-Cookie"), "HttpOnly") || !strings.Contains(hdr.Get("Set-Cookie"), "SameSite=Strict") {
		t.Fatalf("POST /login: HTTP %d, Set-Cookie %q", code, hdr.Get("Set-Cookie"))
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
	testsupport.Within(t, "drained runner holds nothing", 30*time.Second, func() bool {
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

// newLoginServer is an admin server over a migrated, empty database, for the
// sign-in and readiness tests (tls: served over HTTPS).
func newLoginServer(t *testing.T, tls bool, ready ...ReadyCheck) (*Admin, *adminClient) {
	t.Helper()
	pool := newPool(t, pgtest.New(t))
	a := NewAdmin(AdminConfig{Pool: pool, Token: testAdminToken, Ready: ready, RunnerID: "login", Logger: testLogger(t)})
	var srv *httptest.Server
	if tls {
		srv = httptest.NewTLSServer(a.Handler())
	} else {
		srv = httptest.NewServer(a.Handler())
	}
	t.Cleanup(srv.Close)
	hc := srv.Client()
	hc.Timeout = 30 * time.Second
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return a, &adminClient{t: t, base: srv.URL, hc: hc}
}

// getWithCookie GETs path with the page cookie set to value.
func (c *adminClient) getWithCookie(path, value string) int {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	req.AddCookie(&http.Cookie{Name: adminCookie, Value: value})
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// login POSTs the form; it returns the status and the page cookie set, if any.
func (c *adminClient) login(token string, hdr map[string]string) (int, *http.Cookie, http.Header) {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodPost, c.base+"/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if ck.Name == adminCookie {
			return resp.StatusCode, ck, resp.Header
		}
	}
	return resp.StatusCode, nil, resp.Header
}

func TestAdminPageSignInOnlyByFormPOST(t *testing.T) {
	a, c := newLoginServer(t, false)

	// The token in the address signs nothing in.
	code, hdr, out := c.do("GET", "/?token="+testAdminToken, "", "")
	if code != http.StatusUnauthorized || hdr.Get("Set-Cookie") != "" || !strings.Contains(out, `action="/login"`) {
		t.Fatalf("GET /?token=: HTTP %d, Set-Cookie %q: %.300s", code, hdr.Get("Set-Cookie"), out)
	}
	c.expect("GET", "/bots/x?token="+testAdminToken, "", "", http.StatusUnauthorized)

	// The form's POST does; the cookie is HttpOnly, SameSite=Strict, expires in 12 h, not Secure over plain HTTP.
	code, ck, _ := c.login(testAdminToken, nil)
	if code != http.StatusSeeOther || ck == nil {
		t.Fatalf("POST /login: HTTP %d, cookie %v", code, ck)
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.MaxAge != 12*3600 || ck.Secure {
		t.Fatalf("cookie flags: %+v", ck)
	}
	if d := time.Until(ck.Expires); d < 11*time.Hour || d > 13*time.Hour {
		t.Fatalf("cookie Expires %v", ck.Expires)
	}
	if strings.Contains(ck.Value, testAdminToken) {
		t.Fatal("the cookie holds the admin token")
	}
	if got := c.getWithCookie("/", ck.Value); got != http.StatusOK {
		t.Fatalf("page with the cookie: HTTP %d", got)
	}

	// Behind a TLS-terminating proxy the cookie is Secure.
	if _, ck, _ := c.login(testAdminToken, map[string]string{"X-Forwarded-Proto": "https"}); ck == nil || !ck.Secure {
		t.Fatalf("X-Forwarded-Proto https: cookie %+v", ck)
	}

	// The server checks the expiry signed into the value, whatever the browser keeps.
	if got := c.getWithCookie("/", a.cookieValue(time.Now().Add(-time.Second))); got != http.StatusUnauthorized {
		t.Fatalf("expired cookie: HTTP %d", got)
	}
	parts := strings.Split(ck.Value, ".")
	later := strconv.FormatInt(time.Now().Add(10*time.Hour).Unix()+1, 10)
	if got := c.getWithCookie("/", parts[0]+"."+later+"."+parts[2]); got != http.StatusUnauthorized {
		t.Fatalf("cookie with a changed expiry: HTTP %d", got)
	}
	other := NewAdmin(AdminConfig{Token: "another-token-0123456789"})
	if got := c.getWithCookie("/", other.cookieValue(time.Now().Add(time.Hour))); got != http.StatusUnauthorized {
		t.Fatalf("cookie signed by another token: HTTP %d", got)
	}
}

func TestAdminPageCookieSecureOverTLS(t *testing.T) {
	_, c := newLoginServer(t, true)
	code, ck, _ := c.login(testAdminToken, nil)
	if code != http.StatusSeeOther || ck == nil || !ck.Secure || !ck.HttpOnly {
		t.Fatalf("POST /login over TLS: HTTP %d, cookie %+v", code, ck)
	}
}

func TestAdminPageSignInRateLimit(t *testing.T) {
	_, c := newLoginServer(t, false)
	for i := 0; i < loginBurst; i++ {
		if code, _, _ := c.login("wrong", nil); code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: HTTP %d, want 401", i+1, code)
		}
	}
	// The next attempt is refused before the token is looked at, even the right one.
	code, ck, hdr := c.login(testAdminToken, nil)
	if code != http.StatusTooManyRequests || ck != nil {
		t.Fatalf("attempt over the limit: HTTP %d, cookie %v", code, ck)
	}
	if s, err := strconv.Atoi(hdr.Get("Retry-After")); err != nil || s < 1 || s > int(loginEvery/time.Second) {
		t.Fatalf("Retry-After %q", hdr.Get("Retry-After"))
	}
}

func TestLoginLimiterPerClientAndBounded(t *testing.T) {
	l := newLoginLimiter()
	now := time.Now()
	for i := 0; i < loginBurst; i++ {
		if ok, _ := l.allow("10.0.0.1", now); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	if ok, wait := l.allow("10.0.0.1", now); ok || wait <= 0 {
		t.Fatalf("over the burst: ok=%v wait=%v", ok, wait)
	}
	if ok, _ := l.allow("10.0.0.2", now); !ok {
		t.Fatal("another client was limited too")
	}
	if ok, _ := l.allow("10.0.0.1", now.Add(loginEvery)); !ok {
		t.Fatal("no attempt after the refill interval")
	}
	// Many clients: the map stays bounded (idle clients are forgotten, the rest share one limiter).
	for i := 0; i < loginClients+100; i++ {
		l.allow(fmt.Sprintf("192.0.2.%d/%d", i%256, i), now)
	}
	if len(l.per) > loginClients {
		t.Fatalf("%d clients tracked, limit %d", len(l.per), loginClients)
	}
	l.allow("late", now.Add(time.Hour)) // everyone has refilled: they are forgotten
	if len(l.per) > 1 {
		t.Fatalf("%d clients tracked after an hour of quiet", len(l.per))
	}
}

func TestReadyzHidesErrorsFromAnonymousCallers(t *testing.T) {
	const secretish = "dial tcp 10.1.2.3:7233: connect: connection refused (detail)"
	_, c := newLoginServer(t, false, ReadyCheck{Name: "temporal", Check: func(context.Context) error { return errors.New(secretish) }})
	var got struct {
		Ready  bool              `json:"ready"`
		Checks map[string]string `json:"checks"`
	}
	out := c.expect("GET", "/readyz", "", "", http.StatusServiceUnavailable)
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if got.Ready || got.Checks["temporal"] != "failed" || got.Checks["postgres"] != "ok" || strings.Contains(out, "10.1.2.3") {
		t.Fatalf("anonymous /readyz: %s", out)
	}
	// The admin token shows the error.
	out = c.expect("GET", "/readyz", testAdminToken, "", http.StatusServiceUnavailable)
	if !strings.Contains(out, "10.1.2.3") {
		t.Fatalf("authenticated /readyz has no detail: %s", out)
	}
	// The ops listener (no auth at all) says as little.
	a := NewAdmin(AdminConfig{Ready: []ReadyCheck{{Name: "temporal", Check: func(context.Context) error { return errors.New(secretish) }}}})
	rec := httptest.NewRecorder()
	a.OpsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "10.1.2.3") {
		t.Fatalf("ops /readyz: HTTP %d: %s", rec.Code, rec.Body.String())
	}
}
