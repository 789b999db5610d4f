package runner

// The admin HTTP server: health, readiness and metrics for the platform, a
// bearer-token JSON API for operators (bots, runners, shards; pause, resume,
// reconnect, drain) and the server-rendered status page (admin_page.go);
// who may call it is in admin_auth.go, its handlers in admin_handlers.go.
// See docs/admin.md. No response ever carries a bot token or the admin token.

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/httpapi"
)

// OpReconnect is the op of a NOTIFY on BotsChannel asking the owner of a bot
// to reconnect its session (sent by the admin API of any replica).
const OpReconnect = "reconnect"

// Audit actions of the admin API (pause and resume use the registry's).
const (
	ActionBotReconnect = "bot.reconnect"
	ActionRunnerDrain  = "runner.drain"
)

// adminCookie holds an HMAC of the admin token for the status page (HttpOnly, SameSite=Strict).
const adminCookie = "agentrunner_admin"

// ReadyCheck is one dependency /readyz checks (Temporal, Vault, ...).
type ReadyCheck struct {
	Name  string
	Check func(ctx context.Context) error
}

// AdminConfig configures the admin server.
type AdminConfig struct {
	Pool       *pgxpool.Pool
	Registry   *Registry
	Supervisor *Supervisor // nil: no local sessions (the page shows the database's view)
	Gatherer   prometheus.Gatherer
	// Token is the admin bearer token. Set: /api/* and the page require it.
	// Empty: reads are open (dev) and every write is refused with 403.
	Token    string
	Ready    []ReadyCheck
	RunnerID string
	Logger   zerolog.Logger
}

// Admin serves the admin endpoints.
type Admin struct {
	cfg    AdminConfig
	log    zerolog.Logger
	logins *loginLimiter // rate limit of POST /login (admin_page.go)
	json   *httpapi.API  // writes every JSON answer and error (wire)
}

// NewAdmin returns the admin server.
func NewAdmin(cfg AdminConfig) *Admin {
	if cfg.RunnerID == "" && cfg.Supervisor != nil {
		cfg.RunnerID = cfg.Supervisor.RunnerID()
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.NewRegistry()
	}
	a := &Admin{cfg: cfg, log: cfg.Logger.With().Str("component", "admin").Logger(), logins: newLoginLimiter()}
	a.json = a.wire()
	return a
}

// Handler serves the status page, /api/v1/* and /healthz, /readyz, /metrics.
func (a *Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	a.ops(mux)
	mux.HandleFunc("GET /api/v1/bots", a.api(a.listBots))
	mux.HandleFunc("GET /api/v1/bots/{id}", a.api(a.getBot))
	mux.HandleFunc("GET /api/v1/runners", a.api(a.listRunners))
	mux.HandleFunc("GET /api/v1/shards", a.api(a.listShards))
	mux.HandleFunc("GET /api/v1/dead-letters", a.api(a.listDeadLetters))
	mux.HandleFunc("POST /api/v1/bots/{id}/pause", a.write(a.pause))
	mux.HandleFunc("POST /api/v1/bots/{id}/resume", a.write(a.resume))
	mux.HandleFunc("POST /api/v1/bots/{id}/reconnect", a.write(a.reconnect))
	mux.HandleFunc("POST /api/v1/runners/{id}/drain", a.write(a.drain))
	mux.HandleFunc("/api/", a.json.Func(func(w http.ResponseWriter, r *http.Request) (any, error) {
		for _, m := range []string{http.MethodGet, http.MethodPost} {
			r2 := r.Clone(r.Context())
			r2.Method = m
			if _, pat := mux.Handler(r2); pat != "/api/" && pat != "" {
				w.Header().Set("Allow", m)
				return nil, errf(http.StatusMethodNotAllowed, "method not allowed: use %s", m)
			}
		}
		return nil, errf(http.StatusNotFound, "no such endpoint: see docs/admin.md")
	}))
	a.pages(mux)
	return secureHeaders(mux)
}

// OpsHandler serves /healthz, /readyz and /metrics only, without auth.
func (a *Admin) OpsHandler() http.Handler {
	mux := http.NewServeMux()
	a.ops(mux)
	return secureHeaders(mux)
}

func (a *Admin) ops(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", a.json.Func(func(w http.ResponseWriter, r *http.Request) (any, error) {
		return map[string]any{"status": "ok", "runner_id": a.cfg.RunnerID}, nil
	}))
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.cfg.Gatherer, promhttp.HandlerOpts{}))
}

func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Cache-Control", "no-store")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'")
		h.ServeHTTP(w, r)
	})
}

// readyz: Postgres answers, every ReadyCheck passes, the leases are renewing.
// Each check reads "ok" or "failed"; the error text of a failed check is
// logged, and shown only to a caller authenticated with the admin token
// (bearer or the page's cookie), never to an anonymous probe.
func (a *Admin) readyz(w http.ResponseWriter, r *http.Request) {
	checks := map[string]string{}
	ready := true
	detailed := a.cfg.Token != "" && a.authed(r)
	check := func(name string, err error) {
		if err != nil {
			ready = false
			a.log.Warn().Err(err).Str("check", name).Msg("readiness check failed")
			checks[name] = "failed"
			if detailed {
				checks[name] = "failed: " + err.Error()
			}
			return
		}
		checks[name] = "ok"
	}
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if a.cfg.Pool != nil {
		check("postgres", a.cfg.Pool.Ping(ctx))
	}
	for _, c := range a.cfg.Ready {
		if c.Check != nil {
			check(c.Name, c.Check(ctx))
		}
	}
	if a.cfg.Supervisor != nil {
		var err error
		if !a.cfg.Supervisor.Ready() {
			err = errors.New("leases not renewing (last heartbeat failed) or draining")
		}
		check("leases", err)
	}
	code := http.StatusOK
	if !ready {
		code = http.StatusServiceUnavailable
	}
	a.json.JSON(w, code, map[string]any{"ready": ready, "checks": checks})
}
