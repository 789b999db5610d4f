package sim

// The control API's counters and chaos settings.

import (
	"net/http"
)

func (s *Server) ctlStats(w http.ResponseWriter, r *http.Request) (any, error) {
	st := s.stats.snapshot()
	s.mu.RLock()
	st.Bots, st.Users, st.Chats = len(s.state.bots), len(s.state.users), len(s.state.chats)
	s.mu.RUnlock()
	return st, nil
}

func (s *Server) ctlGetChaos(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.chaos.get(), nil
}

func (s *Server) ctlPutChaos(w http.ResponseWriter, r *http.Request) (any, error) {
	var cfg ChaosConfig
	if aerr := readJSON(w, r, false, &cfg); aerr != nil {
		return nil, aerr
	}
	if aerr := cfg.validate(); aerr != nil {
		return nil, aerr
	}
	s.chaos.set(cfg)
	s.log.Info().Uint64("seed", cfg.Seed).Msg("sim: chaos configured")
	return cfg, nil
}
