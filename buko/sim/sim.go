// Package sim owns the Buko simulator: an in-memory Buko that speaks the Bot
// API (POST /bot/<method>), the Bot Gateway WebSocket (GET /bot/ws) and a
// control API for tests and tools under /sim/, all on one http.Handler, and
// mounts the web chat page (package buko/sim/web) at every other path.
//
// It implements ../shared/spec/buko-bot-api.md together with the decisions of
// docs/architecture.md §3 and §4; every further decision it makes where both are
// silent is written down in docs/simulator.md. State lives in memory only. It
// is sized for 20,000 bots with open Gateway sockets in one process: an idle
// socket costs one goroutine and about 15 KB (docs/BENCHMARKS.md).
//
// Files by concern: sim.go (options, server, routing, shutdown), model.go
// (bots, users, chats, messages, ids), routing.go (entities, privacy mode,
// rendering updates), updates.go (per-bot update log, cursor, polling),
// rest.go and media.go (Bot API methods), gateway.go (WebSocket sessions),
// control.go (the /sim/ API), quota.go, chaos.go, stats.go, reply.go (JSON
// answers and the error envelope).
package sim

import (
	crand "crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko/sim/web"
	"buko.app/agentrunner/httpapi"
)

// Defaults of Options.
const (
	DefaultPingInterval             = 20 * time.Second
	DefaultGatewayAttemptsPerMinute = 30
	DefaultInFlightWindow           = 100
	DefaultWriteTimeout             = 10 * time.Second
)

// Options configure a Server. The zero value is a working simulator.
type Options struct {
	// AdminToken, when set, guards the control API: every /sim/ request must
	// carry "Authorization: Bearer <AdminToken>". The Bot API and the web page
	// are not affected.
	AdminToken string

	// Now is the clock for quota windows and message dates (nil: time.Now).
	// Tests drive quotas with a fake clock. Gateway timers (ping, pong
	// timeout) and long polls always use real time.
	Now func() time.Time

	// PingInterval is how often the server sends {"type":"ping"} on every
	// Gateway socket (default 20 s).
	PingInterval time.Duration

	// PongTimeout is how long a ping may stay unanswered before the socket is
	// closed with 4000 (default 2 × PingInterval, i.e. two missed pongs). It
	// is checked at each ping tick.
	PongTimeout time.Duration

	// GatewayAttemptsPerMinute limits Gateway upgrade attempts per bot per
	// fixed clock minute (default 30); more get HTTP 429 RATE_LIMITED.
	GatewayAttemptsPerMinute int

	// InFlightWindow is the most updates sent and not yet acked on one
	// Gateway socket (default 100).
	InFlightWindow int

	// WriteTimeout bounds one frame write to a Gateway socket; a client that
	// does not read for that long loses its socket (default 10 s).
	WriteTimeout time.Duration

	// Seed makes ids, update-id bases and scoped user ids reproducible (0:
	// a random seed). Tokens are always random. Chaos has its own seed.
	Seed uint64

	// Logger receives connection events at debug level and failures at warn.
	// The zero value logs nothing. Tokens are never logged.
	Logger zerolog.Logger
}

func (o *Options) withDefaults() {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.PongTimeout <= 0 {
		o.PongTimeout = 2 * o.PingInterval
	}
	if o.GatewayAttemptsPerMinute <= 0 {
		o.GatewayAttemptsPerMinute = DefaultGatewayAttemptsPerMinute
	}
	if o.InFlightWindow <= 0 {
		o.InFlightWindow = DefaultInFlightWindow
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.Seed == 0 {
		var b [8]byte
		_, _ = crand.Read(b[:]) // never fails on Linux; a zero seed would still work
		o.Seed = binary.LittleEndian.Uint64(b[:]) | 1
	}
}

// Server is the simulator. It is an http.Handler; create it with New and
// release it with Close.
type Server struct {
	opts Options
	log  zerolog.Logger
	web  http.Handler
	ctl  *http.ServeMux
	// rest and control write the answers and errors of the Bot API and the
	// control API (reply.go).
	rest, control *httpapi.API
	stats         *stats
	chaos         *chaos

	// wg counts Gateway goroutines (one reader per socket, plus a writer while
	// it has something to send) so Close can wait for them.
	wg sync.WaitGroup

	mu    sync.RWMutex // guards everything below and the chat model
	state model
	// closed is set once by Close; done is closed with it and wakes long polls.
	closed bool
	done   chan struct{}
}

// New returns a simulator with the given options.
func New(opts Options) *Server {
	opts.withDefaults()
	s := &Server{
		opts:  opts,
		log:   opts.Logger,
		web:   web.Handler(),
		stats: newStats(),
		chaos: newChaos(),
		done:  make(chan struct{}),
	}
	s.rest, s.control = newWire(opts.Logger)
	s.state.init(opts.Seed)
	s.ctl = s.controlMux()
	return s
}

func (s *Server) now() time.Time { return s.opts.Now() }

// ServeHTTP routes /bot/ws to the Gateway, /bot/* to the Bot API, /sim/* to
// the control API and everything else to the web page.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/bot/ws":
		s.serveGateway(w, r)
	case strings.HasPrefix(p, "/bot/"):
		s.serveREST(w, r)
	case p == "/sim" || strings.HasPrefix(p, "/sim/"):
		if !s.adminOK(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sim"`)
			s.control.Fail(w, r, errUnauthorized("the control API needs Authorization: Bearer <admin token>"))
			return
		}
		s.ctl.ServeHTTP(w, r)
	default:
		s.web.ServeHTTP(w, r)
	}
}

func (s *Server) adminOK(r *http.Request) bool {
	if s.opts.AdminToken == "" {
		return true
	}
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(h[len(prefix):]), []byte(s.opts.AdminToken)) == 1
}

// Close closes every Gateway socket with 1001 (going away), ends long polls,
// and waits until the sockets' goroutines have ended: a peer that does not
// answer the close handshake is dropped after the WebSocket library's own
// 5 s timeouts. New Gateway connections are refused afterwards; the REST and
// control APIs keep answering. Close is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return
	}
	s.closed = true
	close(s.done)
	bots := append([]*bot(nil), s.state.botList...)
	s.mu.Unlock()

	for _, b := range bots {
		b.mu.Lock()
		for len(b.conns) > 0 {
			b.conns[0].closeLocked(closeGoingAway, "server shutting down")
		}
		b.mu.Unlock()
	}
	s.wg.Wait()
}
