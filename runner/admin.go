package runner

// The admin HTTP server: health, readiness and metrics for the platform, a
// bearer-token JSON API for operators (bots, runners, shards; pause, resume,
// reconnect, drain) and the server-rendered status page (admin_page.go).
// See docs/admin.md. No response ever carries a bot token or the admin token.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/httpapi"
	"buko.app/agentrunner/vault"
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

// ---- auth ----

func (a *Admin) tokenOK(got string) bool {
	return a.cfg.Token != "" && got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(a.cfg.Token)) == 1
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// authed: no token configured (reads open), or the bearer header holds it,
// or the page's cookie is one this token signed and has not expired.
func (a *Admin) authed(r *http.Request) bool {
	if a.cfg.Token == "" {
		return true
	}
	if a.tokenOK(bearer(r)) {
		return true
	}
	c, err := r.Cookie(adminCookie)
	return err == nil && a.cookieOK(c.Value, time.Now())
}

// cookieLifetime is how long a page sign-in lasts (cookie Max-Age and the
// expiry signed into its value).
const cookieLifetime = 12 * time.Hour

// cookieValue is what the page's cookie holds: "v2.<expiry unix seconds>.<HMAC
// of the expiry under the admin token>", so the token itself never travels
// back in a response and a copied cookie stops working at its expiry
// whatever the browser does.
func (a *Admin) cookieValue(expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	return "v2." + exp + "." + a.cookieMAC(exp)
}

func (a *Admin) cookieMAC(exp string) string {
	m := hmac.New(sha256.New, []byte(a.cfg.Token))
	m.Write([]byte("agentrunner admin page cookie v2\x00" + exp))
	return hex.EncodeToString(m.Sum(nil))
}

// cookieOK checks a cookie value's signature and expiry.
func (a *Admin) cookieOK(v string, now time.Time) bool {
	parts := strings.Split(v, ".")
	if len(parts) != 3 || parts[0] != "v2" {
		return false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || subtle.ConstantTimeCompare([]byte(parts[2]), []byte(a.cookieMAC(parts[1]))) != 1 {
		return false
	}
	return now.Before(time.Unix(exp, 0)) && time.Unix(exp, 0).Before(now.Add(cookieLifetime+time.Minute))
}

// apiError is a refused admin request: the project's one typed API error
// (httpapi.Error), answered as {"error": Message} with its Status.
type apiError = httpapi.Error

func errf(status int, format string, args ...any) error {
	return httpapi.Errorf(status, "", format, args...)
}

// wire is the admin API's format: indented JSON, errors as {"error": "..."},
// an unexpected error logged and answered 500 without its text.
func (a *Admin) wire() *httpapi.API {
	return &httpapi.API{
		ContentType: "application/json; charset=utf-8",
		Indent:      "  ",
		ErrorBody:   func(e *apiError) any { return map[string]string{"error": e.Message} },
		Internal: func(r *http.Request, err error) *apiError {
			a.log.Warn().Err(err).Str("path", r.URL.Path).Msg("admin request failed")
			return &apiError{Status: http.StatusInternalServerError, Message: "internal error (see the replica's log)"}
		},
	}
}

func (a *Admin) api(f httpapi.Handler) http.HandlerFunc {
	return a.json.Func(func(w http.ResponseWriter, r *http.Request) (any, error) {
		if !a.authed(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="agentrunner"`)
			return nil, errf(http.StatusUnauthorized, "authentication required: send Authorization: Bearer <admin token>")
		}
		return f(w, r)
	})
}

// write guards an action: refused unless a token is configured and sent as
// a bearer header (never a cookie: no cross-site writes).
func (a *Admin) write(f httpapi.Handler) http.HandlerFunc {
	return a.json.Func(func(w http.ResponseWriter, r *http.Request) (any, error) {
		if a.cfg.Token == "" {
			return nil, errf(http.StatusForbidden, "admin writes are disabled: no admin token is configured on this replica")
		}
		if !a.tokenOK(bearer(r)) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="agentrunner"`)
			return nil, errf(http.StatusUnauthorized, "authentication required: send Authorization: Bearer <admin token>")
		}
		return f(w, r)
	})
}

// accepted is a 202 answer.
func accepted(body any) httpapi.WithStatus {
	return httpapi.WithStatus{Status: http.StatusAccepted, Body: body}
}

// ---- input ----

// botIDParam validates the {id} path value; it is never echoed back.
func pathID(r *http.Request, what string) (string, error) {
	id := r.PathValue("id")
	if id == "" || len(id) > 200 || strings.IndexFunc(id, func(c rune) bool { return unicode.IsControl(c) || unicode.IsSpace(c) }) >= 0 {
		return "", errf(http.StatusBadRequest, "invalid %s id: want 1 to 200 printable characters without spaces", what)
	}
	return id, nil
}

// actionBody is the optional body of an action.
type actionBody struct {
	Reason string `json:"reason"`
}

func readAction(r *http.Request) (actionBody, error) {
	var b actionBody
	data, err := io.ReadAll(io.LimitReader(r.Body, 4097))
	if err != nil {
		return b, errf(http.StatusBadRequest, "cannot read the request body")
	}
	if len(data) > 4096 {
		return b, errf(http.StatusRequestEntityTooLarge, "request body too large (at most 4096 bytes)")
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return b, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, errf(http.StatusBadRequest, "bad request body: want a JSON object like {\"reason\": \"...\"} (%s)", jsonProblem(err))
	}
	if dec.More() {
		return b, errf(http.StatusBadRequest, "bad request body: one JSON object expected")
	}
	if len(b.Reason) > 500 {
		return b, errf(http.StatusBadRequest, "reason too long (at most 500 characters)")
	}
	return b, nil
}

// jsonProblem describes a decode error without echoing the input.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return "unknown field"
	}
	return "invalid JSON"
}

func (a *Admin) actor() string { return "admin-api:" + a.cfg.RunnerID }

// ---- reads ----

func (a *Admin) listBots(w http.ResponseWriter, r *http.Request) (any, error) {
	bots, err := a.bots(r.Context(), "")
	if err != nil {
		return nil, err
	}
	bots = filterBots(bots, r.URL.Query().Get("q"), r.URL.Query().Get("state"))
	return map[string]any{"bots": bots}, nil
}

func (a *Admin) getBot(w http.ResponseWriter, r *http.Request) (any, error) {
	id, err := pathID(r, "bot")
	if err != nil {
		return nil, err
	}
	return a.botDetail(r.Context(), id)
}

func (a *Admin) botDetail(ctx context.Context, id string) (BotDetail, error) {
	bots, err := a.bots(ctx, id)
	if err != nil {
		return BotDetail{}, err
	}
	if len(bots) == 0 {
		return BotDetail{}, errf(http.StatusNotFound, "no such managed bot")
	}
	d := BotDetail{BotView: bots[0], Events: []BotEvent{}}
	if a.cfg.Supervisor != nil {
		if st, ok := a.cfg.Supervisor.BotStatus(id); ok {
			d.Events = st.Events
			d.EventsFrom = a.cfg.RunnerID
		}
	}
	return d, nil
}

func (a *Admin) listRunners(w http.ResponseWriter, r *http.Request) (any, error) {
	rs, err := a.runners(r.Context())
	if err != nil {
		return nil, err
	}
	return map[string]any{"runners": rs}, nil
}

func (a *Admin) listShards(w http.ResponseWriter, r *http.Request) (any, error) {
	ss, err := a.shards(r.Context())
	if err != nil {
		return nil, err
	}
	return map[string]any{"shards": ss}, nil
}

// ---- actions ----

func (a *Admin) setStatus(r *http.Request, pause bool) (any, error) {
	id, err := pathID(r, "bot")
	if err != nil {
		return nil, err
	}
	if _, err := readAction(r); err != nil {
		return nil, err
	}
	if a.cfg.Registry == nil {
		return nil, errf(http.StatusServiceUnavailable, "this replica has no registry configured")
	}
	f := a.cfg.Registry.Resume
	if pause {
		f = a.cfg.Registry.Pause
	}
	b, changed, err := f(r.Context(), a.actor(), id)
	switch {
	case errors.Is(err, ErrBotNotFound):
		return nil, errf(http.StatusNotFound, "no such managed bot")
	case errors.Is(err, ErrInvalidArgument):
		return nil, errf(http.StatusBadRequest, "invalid bot id")
	case err != nil:
		return nil, err
	}
	return map[string]any{"bot_id": b.ID, "status": b.Status, "changed": changed}, nil
}

func (a *Admin) pause(w http.ResponseWriter, r *http.Request) (any, error) {
	return a.setStatus(r, true)
}
func (a *Admin) resume(w http.ResponseWriter, r *http.Request) (any, error) {
	return a.setStatus(r, false)
}

// reconnect: the owner of the bot's shard drops the socket and dials again.
// Here if this replica runs the session, else through a NOTIFY on
// BotsChannel that the owner acts on.
func (a *Admin) reconnect(w http.ResponseWriter, r *http.Request) (any, error) {
	id, err := pathID(r, "bot")
	if err != nil {
		return nil, err
	}
	body, err := readAction(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	var shard int
	var owner *string
	err = a.cfg.Pool.QueryRow(ctx, `SELECT b.shard, CASE WHEN l.expires_at > now() THEN l.owner END
		FROM bots b LEFT JOIN shard_leases l ON l.shard = b.shard WHERE b.id = $1`, id).Scan(&shard, &owner)
	if err != nil {
		if isNoRows(err) {
			return nil, errf(http.StatusNotFound, "no such managed bot")
		}
		return nil, fmt.Errorf("admin: read bot: %w", err)
	}
	how := ""
	switch {
	case a.cfg.Supervisor != nil && a.cfg.Supervisor.Reconnect(id):
		how = "reconnected by this replica"
	case owner == nil:
		return nil, errf(http.StatusConflict, "no replica owns shard %d right now; the bot connects when one claims it", shard)
	default:
		payload, _ := json.Marshal(botEvent{Op: OpReconnect, BotID: id, Shard: &shard})
		if _, err := a.cfg.Pool.Exec(ctx, `SELECT pg_notify($1, $2)`, BotsChannel, string(payload)); err != nil {
			return nil, fmt.Errorf("admin: notify owner: %w", err)
		}
		how = "asked owner " + *owner
	}
	if err := vault.Audit(ctx, a.cfg.Pool, vault.AuditEntry{Actor: a.actor(), Action: ActionBotReconnect, BotID: id,
		Detail: map[string]any{"shard": shard, "how": how, "reason": body.Reason}}); err != nil {
		return nil, fmt.Errorf("admin: audit: %w", err)
	}
	return accepted(map[string]any{"bot_id": id, "shard": shard, "result": how}), nil
}

// drain sets runners.draining; the target sees it at its next heartbeat
// (woken at once by a NOTIFY on ShardsChannel), releases every shard and
// stays up holding nothing (readyz 503) until it is stopped.
func (a *Admin) drain(w http.ResponseWriter, r *http.Request) (any, error) {
	id, err := pathID(r, "runner")
	if err != nil {
		return nil, err
	}
	body, err := readAction(r)
	if err != nil {
		return nil, err
	}
	ctx := r.Context()
	tag, err := a.cfg.Pool.Exec(ctx, `UPDATE runners SET draining = true WHERE id = $1`, id)
	if err != nil {
		return nil, fmt.Errorf("admin: mark runner draining: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return nil, errf(http.StatusNotFound, "no such runner")
	}
	ev, _ := json.Marshal(shardsEvent{Runner: "admin", Event: "drain"})
	if _, err := a.cfg.Pool.Exec(ctx, `SELECT pg_notify($1, $2)`, ShardsChannel, string(ev)); err != nil {
		a.log.Warn().Err(err).Msg("drain: notify failed; the runner sees the flag at its next heartbeat")
	}
	if a.cfg.Supervisor != nil && id == a.cfg.RunnerID {
		a.cfg.Supervisor.Shards().Wake()
	}
	if err := vault.Audit(ctx, a.cfg.Pool, vault.AuditEntry{Actor: a.actor(), Action: ActionRunnerDrain,
		Detail: map[string]any{"runner_id": id, "reason": body.Reason}}); err != nil {
		return nil, fmt.Errorf("admin: audit: %w", err)
	}
	return accepted(map[string]any{"runner_id": id, "draining": true}), nil
}
