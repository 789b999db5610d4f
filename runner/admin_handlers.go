package runner

// admin_handlers.go holds the admin API's handlers: the input they take, the
// reads (bots, runners, shards) and the actions (pause, resume, reconnect,
// drain). Routes are in admin.go, who may call them in admin_auth.go.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode"

	"buko.app/agentrunner/vault"
)

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
