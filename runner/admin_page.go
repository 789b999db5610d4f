package runner

// The status page: server-rendered html/template (embedded, no build step),
// readable on a phone, refreshing itself with a meta refresh. Everything shown
// is escaped by html/template.

import (
	"context"
	"embed"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
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

// page guards a page: without the token it shows the login form; a
// ?token= is moved into the cookie and dropped from the address.
func (a *Admin) page(f func(r *http.Request) (string, pageData, int)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if t := r.URL.Query().Get("token"); t != "" {
			q := r.URL.Query()
			q.Del("token")
			u := url.URL{Path: r.URL.Path, RawQuery: q.Encode()}
			if a.tokenOK(t) {
				a.setCookie(w)
				http.Redirect(w, r, u.String(), http.StatusSeeOther)
				return
			}
			a.render(w, "login", pageData{Title: "Sign in", Error: "wrong token"}, http.StatusUnauthorized)
			return
		}
		if !a.authed(r) {
			a.render(w, "login", pageData{Title: "Sign in"}, http.StatusUnauthorized)
			return
		}
		name, d, code := f(r)
		a.render(w, name, d, code)
	}
}

func (a *Admin) setCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: adminCookie, Value: a.cookieValue(), Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: 12 * 3600})
}

func (a *Admin) login(w http.ResponseWriter, r *http.Request) {
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
		a.render(w, "login", pageData{Title: "Sign in", Error: "wrong token"}, http.StatusUnauthorized)
		return
	}
	a.setCookie(w)
	http.Redirect(w, r, "/", http.StatusSeeOther)
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
		d.Error = ae.msg
		return "bot", d, ae.status
	}
	a.log.Warn().Err(err).Msg("bot page: read failed")
	d.Error = "cannot read the bot from Postgres (see the replica's log)"
	return "bot", d, http.StatusServiceUnavailable
}
