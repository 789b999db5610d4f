package runner

// The status page: server-rendered html/template (embedded, no build step),
// readable on a phone, refreshing itself with a meta refresh. Everything shown
// is escaped by html/template.

import (
	"context"
	"embed"
	"html/template"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

//go:embed status/*.html status/*.css
var statusFiles embed.FS

var statusTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"ago": func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return "—"
		}
		return time.Since(*t).Round(time.Second).String() + " ago"
	},
	"secs": func(f *float64) string {
		if f == nil {
			return "—"
		}
		return (time.Duration(*f * float64(time.Second))).Round(time.Second).String()
	},
	"since": func(t time.Time) string { return time.Since(t).Round(time.Second).String() + " ago" },
	"stamp": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"bad": func(state string) bool {
		switch state {
		case "live", "polling", "paused", "connecting":
			return false
		}
		return true
	},
}).ParseFS(statusFiles, "status/*.html"))

// refreshSeconds is the status page's meta refresh period.
const refreshSeconds = 10

type pageData struct {
	Title    string
	Refresh  int
	RunnerID string
	Now      time.Time
	Error    string

	// index
	Runners     []RunnerView
	LiveRunners int
	ShardsHeld  int
	ShardsTotal int
	States      []stateCount
	Bots        []BotView
	TotalBots   int
	Q, State    string

	// bot page
	Bot *BotDetail

	// dead letters not replayed yet, per bot (deadletter_admin.go)
	DeadLetters        []deadLetterCount
	DeadLettersPending int
}

type stateCount struct {
	State string
	N     int
}

func (a *Admin) pages(mux *http.ServeMux) {
	mux.HandleFunc("GET /static/status.css", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		data, _ := statusFiles.ReadFile("status/status.css")
		_, _ = w.Write(data)
	})
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("GET /{$}", a.page(a.indexPage))
	mux.HandleFunc("GET /bots/{id}", a.page(a.botPage))
}

// page guards a page: without the token it shows the login form. The token
// is accepted only by the form's POST (login), never in the address: a
// ?token= would land in access logs, proxies and the browser's history.
func (a *Admin) page(f func(r *http.Request) (string, pageData, int)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.authed(r) {
			a.render(w, "login", pageData{Title: "Sign in"}, http.StatusUnauthorized)
			return
		}
		name, d, code := f(r)
		a.render(w, name, d, code)
	}
}

// setCookie signs the page in: HttpOnly, SameSite=Strict, 12 h (Max-Age and
// the expiry signed into the value), and Secure when the request came over
// TLS or through a proxy that says it did (X-Forwarded-Proto: https; trusting
// it can only add the flag, never remove it).
func (a *Admin) setCookie(w http.ResponseWriter, r *http.Request) {
	exp := time.Now().Add(cookieLifetime)
	secure := r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
	http.SetCookie(w, &http.Cookie{Name: adminCookie, Value: a.cookieValue(exp), Path: "/", HttpOnly: true,
		Secure: secure, SameSite: http.SameSiteStrictMode, MaxAge: int(cookieLifetime / time.Second), Expires: exp})
}

func (a *Admin) login(w http.ResponseWriter, r *http.Request) {
	if ok, wait := a.logins.allow(clientIP(r), time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		a.render(w, "login", pageData{Title: "Sign in", Error: "too many sign-in attempts; wait a moment"}, http.StatusTooManyRequests)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		a.render(w, "login", pageData{Title: "Sign in", Error: "bad form"}, http.StatusBadRequest)
		return
	}
	if a.cfg.Token == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if !a.tokenOK(r.PostForm.Get("token")) {
		a.log.Info().Str("client", clientIP(r)).Msg("status page sign-in with a wrong token")
		a.render(w, "login", pageData{Title: "Sign in", Error: "wrong token"}, http.StatusUnauthorized)
		return
	}
	a.setCookie(w, r)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// Sign-in rate limit: per client address, a burst of loginBurst attempts
// then one every loginEvery; at most loginClients addresses are tracked, and
// when that many are busy the rest share one limiter.
const (
	loginBurst   = 5
	loginEvery   = 12 * time.Second
	loginClients = 4096
)

// loginLimiter rate-limits POST /login per client address, in bounded memory.
type loginLimiter struct {
	mu       sync.Mutex
	per      map[string]*rate.Limiter
	overflow *rate.Limiter
}

func newLoginLimiter() *loginLimiter {
	return &loginLimiter{per: map[string]*rate.Limiter{}, overflow: rate.NewLimiter(rate.Every(loginEvery), loginBurst)}
}

// allow takes one attempt for client; refused, it says how long to wait.
func (l *loginLimiter) allow(client string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.per[client]
	if lim == nil {
		if len(l.per) >= loginClients {
			for c, x := range l.per { // forget clients whose bucket has refilled
				if x.TokensAt(now) >= loginBurst {
					delete(l.per, c)
				}
			}
		}
		if len(l.per) < loginClients {
			lim = rate.NewLimiter(rate.Every(loginEvery), loginBurst)
			l.per[client] = lim
		} else {
			lim = l.overflow
		}
	}
	res := lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// clientIP is the host of the request's peer address (a proxy in front
// makes every client one address: the limit is then global).
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func (a *Admin) render(w http.ResponseWriter, name string, d pageData, code int) {
	d.RunnerID, d.Now = a.cfg.RunnerID, time.Now()
	if name != "login" {
		d.Refresh = refreshSeconds
	}
	var b strings.Builder
	if err := statusTemplates.ExecuteTemplate(&b, name, d); err != nil {
		a.log.Error().Err(err).Str("template", name).Msg("status page render failed")
		http.Error(w, "status page render failed (see the replica's log)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

func (a *Admin) indexPage(r *http.Request) (string, pageData, int) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	d := pageData{Title: "agentrunner", Q: r.URL.Query().Get("q"), State: r.URL.Query().Get("state")}
	bots, err := a.bots(ctx, "")
	if err == nil {
		d.Runners, err = a.runners(ctx)
	}
	var shards []ShardView
	if err == nil {
		shards, err = a.shards(ctx)
	}
	if err != nil {
		a.log.Warn().Err(err).Msg("status page: read failed")
		d.Error = "cannot read the fleet from Postgres (see the replica's log)"
		return "index", d, http.StatusServiceUnavailable
	}
	for _, rv := range d.Runners {
		if rv.Live && !rv.Draining {
			d.LiveRunners++
		}
	}
	d.ShardsTotal = len(shards)
	for _, s := range shards {
		if s.Live {
			d.ShardsHeld++
		}
	}
	counts := map[string]int{}
	for _, b := range bots {
		counts[b.State]++
	}
	for st, n := range counts {
		d.States = append(d.States, stateCount{st, n})
	}
	slices.SortFunc(d.States, func(x, y stateCount) int { return strings.Compare(x.State, y.State) })
	d.TotalBots = len(bots)
	d.Bots = filterBots(bots, d.Q, d.State)
	d.DeadLetters, d.DeadLettersPending = a.deadLetterCounts(ctx, bots)
	return "index", d, http.StatusOK
}

func (a *Admin) botPage(r *http.Request) (string, pageData, int) {
	d := pageData{Title: "bot"}
	id, err := pathID(r, "bot")
	if err == nil {
		var bd BotDetail
		bd, err = a.botDetail(r.Context(), id)
		if err == nil {
			d.Bot, d.Title = &bd, "@"+bd.Handle
			return "bot", d, http.StatusOK
		}
	}
	if ae, ok := err.(*apiError); ok {
		d.Error = ae.Message
		return "bot", d, ae.Status
	}
	a.log.Warn().Err(err).Msg("bot page: read failed")
	d.Error = "cannot read the bot from Postgres (see the replica's log)"
	return "bot", d, http.StatusServiceUnavailable
}
