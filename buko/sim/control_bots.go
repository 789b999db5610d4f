package sim

// The control API's bots: create (the only answer that shows a token), list,
// read, change settings, rotate the token.

import (
	"net/http"
	"strconv"
	"unicode/utf8"
)

// BotView is a bot as the control API lists it (never with its token).
type BotView struct {
	BotID                  string `json:"bot_id"`
	Handle                 string `json:"handle"`
	DisplayName            string `json:"display_name"`
	Tier                   string `json:"tier"`
	Official               bool   `json:"official"`
	GatewayConnectionLimit int    `json:"gateway_connection_limit"`
	ConnectionPolicy       string `json:"connection_policy"`
	GatewayOpen            int    `json:"gateway_open"`
	PendingUpdates         int    `json:"pending_updates"`
	LastUpdateID           string `json:"last_update_id"`
	AckedUpdateID          string `json:"acked_update_id"`
}

// botViewLocked needs Server.mu (read) held.
func botViewLocked(b *bot) BotView {
	v := BotView{
		BotID: b.id, Handle: b.handle, DisplayName: b.prof.displayName, Tier: b.prof.tier,
		Official: b.prof.official, GatewayConnectionLimit: b.prof.connLimit, ConnectionPolicy: b.prof.policy,
	}
	b.mu.Lock()
	v.GatewayOpen = len(b.conns)
	v.PendingUpdates = len(b.log)
	v.LastUpdateID = strconv.FormatUint(b.lastID, 10)
	if b.acked > 0 {
		v.AckedUpdateID = strconv.FormatUint(b.acked, 10)
	}
	b.mu.Unlock()
	return v
}

type botReq struct {
	Handle                 string  `json:"handle"`
	DisplayName            *string `json:"display_name"`
	Tier                   *string `json:"tier"`
	Official               *bool   `json:"official"`
	GatewayConnectionLimit *int    `json:"gateway_connection_limit"`
	ConnectionPolicy       *string `json:"connection_policy"`
}

// apply checks the settable fields of req and sets them on p.
func (req *botReq) apply(p *profile) *apiError {
	if req.DisplayName != nil {
		n := utf8.RuneCountInString(*req.DisplayName)
		if n < 1 || n > 64 || !utf8.ValidString(*req.DisplayName) {
			return errBadRequest("display_name must have 1 to 64 characters")
		}
		p.displayName = *req.DisplayName
	}
	if req.Tier != nil {
		if _, ok := limitsFor(*req.Tier); !ok {
			return errBadRequest("tier must be free, pro, team or official")
		}
		p.tier = *req.Tier
	}
	if req.Official != nil {
		p.official = *req.Official
	}
	if req.GatewayConnectionLimit != nil {
		if n := *req.GatewayConnectionLimit; n < 1 || n > 100 {
			return errBadRequest("gateway_connection_limit must be between 1 and 100")
		}
		p.connLimit = *req.GatewayConnectionLimit
	}
	if req.ConnectionPolicy != nil {
		if v := *req.ConnectionPolicy; v != PolicyRejectNew && v != PolicyReplaceOldest {
			return errBadRequest("connection_policy must be reject_new or replace_oldest")
		}
		p.policy = *req.ConnectionPolicy
	}
	return nil
}

// CreatedBot is the answer of POST /sim/bots: the bot and its token, the
// only time the simulator shows it (as Buko shows a token once).
type CreatedBot struct {
	BotView
	Token string `json:"token"`
}

func (s *Server) ctlCreateBot(w http.ResponseWriter, r *http.Request) (any, error) {
	var req botReq
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	p := profile{tier: TierOfficial, official: true, connLimit: 1, policy: PolicyRejectNew}
	if aerr := req.apply(&p); aerr != nil {
		return nil, aerr
	}
	if req.Handle != "" && !handleRE.MatchString(req.Handle) {
		return nil, errBadRequest("handle must be 3 to 32 of [A-Za-z0-9_], starting with a letter")
	}
	tok, sum := newToken()
	s.mu.Lock()
	num := uint64(len(s.state.botList)) + 1
	handle := req.Handle
	if handle == "" {
		handle = "sim_bot_" + strconv.FormatUint(num, 10)
		for s.state.handles[lower(handle)] != "" {
			handle += "x"
		}
	}
	if s.state.handles[lower(handle)] != "" {
		s.mu.Unlock()
		return nil, errConflict("handle @%s is taken", handle)
	}
	if p.displayName == "" {
		p.displayName = handle
	}
	b := &bot{id: s.state.newID("bot_"), handle: handle, num: num, prof: p, tokenHash: sum}
	newBotDelivery(b, s.state.seed)
	s.state.bots[b.id] = b
	s.state.botList = append(s.state.botList, b)
	s.state.byToken[sum] = b
	s.state.handles[lower(handle)] = b.id
	out := CreatedBot{BotView: botViewLocked(b), Token: tok}
	s.mu.Unlock()
	s.log.Debug().Str("bot_id", b.id).Msg("sim: bot created")
	return out, nil
}

func (s *Server) ctlListBots(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.RLock()
	out := make([]BotView, 0, len(s.state.botList))
	for _, b := range s.state.botList {
		out = append(out, botViewLocked(b))
	}
	s.mu.RUnlock()
	return out, nil
}

func (s *Server) ctlGetBot(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.RLock()
	b := s.state.bots[r.PathValue("bot_id")]
	if b == nil {
		s.mu.RUnlock()
		return nil, errNotFound("no bot %q", sanitize(r.PathValue("bot_id"), 40))
	}
	v := botViewLocked(b)
	s.mu.RUnlock()
	return v, nil
}

// ctlPatchBot changes a bot's settings. A lower connection limit applies to
// new connections only; open sockets stay.
func (s *Server) ctlPatchBot(w http.ResponseWriter, r *http.Request) (any, error) {
	var req botReq
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if req.Handle != "" {
		return nil, errBadRequest("a bot's handle cannot change")
	}
	s.mu.Lock()
	b := s.state.bots[r.PathValue("bot_id")]
	if b == nil {
		s.mu.Unlock()
		return nil, errNotFound("no bot %q", sanitize(r.PathValue("bot_id"), 40))
	}
	p := b.prof
	if aerr := req.apply(&p); aerr != nil {
		s.mu.Unlock()
		return nil, aerr
	}
	b.prof = p
	v := botViewLocked(b)
	s.mu.Unlock()
	return v, nil
}

// ctlRotateToken issues a new token: the old one fails at once, and open
// Gateway sockets are closed with 4001.
func (s *Server) ctlRotateToken(w http.ResponseWriter, r *http.Request) (any, error) {
	tok, sum := newToken()
	s.mu.Lock()
	b := s.state.bots[r.PathValue("bot_id")]
	if b == nil {
		s.mu.Unlock()
		return nil, errNotFound("no bot %q", sanitize(r.PathValue("bot_id"), 40))
	}
	delete(s.state.byToken, b.tokenHash)
	b.tokenHash = sum
	s.state.byToken[sum] = b
	b.mu.Lock()
	for len(b.conns) > 0 {
		b.conns[0].closeLocked(closeTokenRevoked, "token rotated")
	}
	b.mu.Unlock()
	s.mu.Unlock()
	s.log.Info().Str("bot_id", b.id).Msg("sim: bot token rotated")
	return map[string]string{"token": tok}, nil
}
