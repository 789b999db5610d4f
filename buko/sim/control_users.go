package sim

// The control API's users: create and list the simulated people.

import (
	"net/http"
	"unicode/utf8"
)

// UserView is a user of the control API.
type UserView struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name"`
	Handle      string `json:"handle,omitempty"`
}

func (s *Server) ctlCreateUser(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		DisplayName string `json:"display_name"`
		Handle      string `json:"handle"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if req.DisplayName == "" {
		req.DisplayName = req.Handle
	}
	if n := utf8.RuneCountInString(req.DisplayName); n < 1 || n > 64 || !utf8.ValidString(req.DisplayName) {
		return nil, errBadRequest("display_name must have 1 to 64 characters")
	}
	if req.Handle != "" && !handleRE.MatchString(req.Handle) {
		return nil, errBadRequest("handle must be 3 to 32 of [A-Za-z0-9_], starting with a letter")
	}
	s.mu.Lock()
	if req.Handle != "" && s.state.handles[lower(req.Handle)] != "" {
		s.mu.Unlock()
		return nil, errConflict("handle @%s is taken", req.Handle)
	}
	u := &user{id: s.state.newID("usr_"), displayName: req.DisplayName, handle: req.Handle}
	s.state.users[u.id] = u
	s.state.userList = append(s.state.userList, u)
	if u.handle != "" {
		s.state.handles[lower(u.handle)] = u.id
	}
	s.mu.Unlock()
	return UserView{UserID: u.id, DisplayName: u.displayName, Handle: u.handle}, nil
}

func (s *Server) ctlListUsers(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.RLock()
	out := make([]UserView, 0, len(s.state.userList))
	for _, u := range s.state.userList {
		out = append(out, UserView{UserID: u.id, DisplayName: u.displayName, Handle: u.handle})
	}
	s.mu.RUnlock()
	return out, nil
}
