package soak

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// recorder watches the simulator's Bot API from the outside (an
// http.Handler around it): each sendMessage that was answered, and each one
// whose answer chaos dropped after it took effect (an ambiguous send). The
// invariants are checked on the simulator's transcripts; the recorder only
// tells, while faults run, when backlogs have drained, and gives the cause of
// a doubled reply. It never looks at the Authorization header.
type recorder struct {
	mu      sync.Mutex
	replies map[msgKey]time.Time // first answered reply to a user message
	lost    map[msgKey]time.Time // sends whose answer was lost
}

// msgKey is a user message: its chat and message id.
type msgKey struct{ chat, msg string }

func newRecorder() *recorder {
	return &recorder{replies: map[msgKey]time.Time{}, lost: map[msgKey]time.Time{}}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (r *recorder) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/bot/sendMessage" || req.Method != http.MethodPost {
			next.ServeHTTP(w, req)
			return
		}
		body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		if err != nil {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		var p struct {
			ChatID  string `json:"chat_id"`
			ReplyTo string `json:"reply_to_message_id"`
		}
		_ = json.Unmarshal(body, &p)
		k := msgKey{p.ChatID, p.ReplyTo}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if v := recover(); v != nil {
				if err, ok := v.(error); ok && errors.Is(err, http.ErrAbortHandler) && p.ReplyTo != "" {
					r.mu.Lock()
					if _, ok := r.lost[k]; !ok {
						r.lost[k] = time.Now()
					}
					r.mu.Unlock()
				}
				panic(v)
			}
		}()
		next.ServeHTTP(sw, req)
		if sw.status == http.StatusOK && p.ReplyTo != "" {
			r.mu.Lock()
			if _, ok := r.replies[k]; !ok {
				r.replies[k] = time.Now()
			}
			r.mu.Unlock()
		}
	})
}

// replied reports whether the user message has an answered reply.
func (r *recorder) replied(k msgKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.replies[k]
	return ok
}

// lostAt is when a send replying to k lost its answer, if one did.
func (r *recorder) lostAt(k msgKey) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.lost[k]
	return t, ok
}
