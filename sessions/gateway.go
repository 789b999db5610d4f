package sessions

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
)

// Reconnect and dial-failure causes (metric labels and OnState causes).
const (
	causeConnected     = "connected"
	causeSilence       = "silence"          // no frame for SilenceTimeout
	causeAdmin         = "admin"            // Reconnect()
	causeTokenRevoked  = "token_revoked"    // close 4001
	causeReplaced      = "replaced"         // close 4009
	causePingTimeout   = "ping_timeout"     // close 4000
	causeBadFrame      = "bad_frame"        // close 4002
	causeGoingAway     = "going_away"       // close 1001
	causeServerError   = "server_error"     // close 1011
	causeClosed        = "closed"           // close 1000
	causeCloseOther    = "close_other"      // any other close code
	causeNetwork       = "network"          // the socket broke, or the upgrade got no answer
	causeUnauthorized  = "unauthorized"     // 401 on the upgrade or getUpdates
	causeRateLimited   = "rate_limited"     // 429
	causeConnLimit     = "connection_limit" // 409 GATEWAY_CONNECTION_LIMIT
	causeUpgradeFailed = "upgrade_failed"   // any other non-101 answer
	causeTokenUnavail  = "token_unavailable"
	causeGatewayActive = "gateway_active" // getUpdates 409 GATEWAY_ACTIVE
	causePollFailed    = "poll_failed"
	causeFallback      = "fallback"
	causePolling       = "polling"
	causeStop          = "stop"
	causeContext       = "context"
	causeStartup       = "start"
)

// gwConn is one Gateway socket and its keep-alive watchdog.
type gwConn struct {
	c            *websocket.Conn
	start        time.Time
	writeTimeout time.Duration

	last   atomic.Int64 // time of the last frame, as nanoseconds since start
	paused atomic.Bool  // the reader holds back (back-pressure): silence is ours
	silent atomic.Bool  // the watchdog declared the socket dead

	abortOnce  sync.Once
	aborted    chan struct{} // closed by abort
	abortCause atomic.Pointer[string]

	wdMu     sync.Mutex
	wdTimer  *time.Timer
	wdDone   bool
	pingedAt int64 // value of last when the watchdog pinged; -1: not yet

	stopHard func() bool // unregisters the hard-stop hook

	ackFailed bool // an ack write failed; guarded by Session.mu
}

func (g *gwConn) write(frame []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), g.writeTimeout)
	defer cancel()
	return g.c.Write(ctx, websocket.MessageText, frame)
}

func (g *gwConn) touch() { g.last.Store(int64(time.Since(g.start))) }

func (g *gwConn) abort(cause string) {
	g.abortOnce.Do(func() {
		g.abortCause.Store(&cause)
		close(g.aborted)
	})
}

// closePolitely closes with code and waits for the close handshake, at most
// until ctx ends (then the socket is dropped).
func (g *gwConn) closePolitely(ctx context.Context, code websocket.StatusCode, reason string) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = g.c.Close(code, reason)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		_ = g.c.CloseNow()
		<-done
	}
}

// watch is the watchdog: after PingInterval of silence it sends one ping; after
// SilenceTimeout it drops the socket. The reader only stores the time of each
// frame, so no timer is reset per frame.
func (s *Session) watch(g *gwConn) {
	g.wdMu.Lock()
	defer g.wdMu.Unlock()
	if g.wdDone {
		return
	}
	ping, silence := s.cfg.PingInterval, s.cfg.SilenceTimeout
	if g.paused.Load() {
		g.wdTimer.Reset(silence)
		return
	}
	last := g.last.Load()
	idle := time.Since(g.start) - time.Duration(last)
	if idle >= silence {
		g.silent.Store(true)
		g.wdDone = true
		_ = g.c.CloseNow()
		return
	}
	if idle >= ping && g.pingedAt != last {
		g.pingedAt = last
		_ = g.write(buko.PingFrame()) // a failed write breaks the socket; the reader reports it
	}
	next := silence - idle
	if g.pingedAt != last {
		next = ping - idle
	}
	g.wdTimer.Reset(next)
}

func (g *gwConn) stopWatchdog() {
	g.wdMu.Lock()
	g.wdDone = true
	g.wdTimer.Stop()
	g.wdMu.Unlock()
}

// dialFailure says why an upgrade did not give a socket.
type dialFailure struct {
	cause      string
	status     int
	code       string
	retryAfter time.Duration
	err        error
}

// dial reads the token and upgrades. It returns a live socket or why not.
func (s *Session) dial() (*gwConn, *dialFailure) {
	cred, err := s.token(s.acceptCtx)
	if err != nil {
		return nil, &dialFailure{cause: causeTokenUnavail, err: err}
	}
	ctx, cancel := context.WithTimeout(s.acceptCtx, s.cfg.DialTimeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, s.wsURL, &websocket.DialOptions{
		HTTPClient: s.hc,
		HTTPHeader: buko.AuthHeader(cred),
	})
	if err != nil {
		return nil, classifyDial(resp, err)
	}
	c.SetReadLimit(buko.MaxFrameBytes)
	g := &gwConn{c: c, start: time.Now(), writeTimeout: s.cfg.WriteTimeout, aborted: make(chan struct{}), pingedAt: -1}
	g.stopHard = context.AfterFunc(s.runCtx, func() { _ = c.CloseNow() })
	g.wdTimer = time.AfterFunc(s.cfg.PingInterval, func() { s.watch(g) })
	return g, nil
}

// classifyDial reads a failed upgrade's answer: 401, 429 (retry_after), 409
// (connection limit) or anything else.
func classifyDial(resp *http.Response, err error) *dialFailure {
	if resp == nil {
		return &dialFailure{cause: causeNetwork, err: err}
	}
	f := &dialFailure{status: resp.StatusCode, err: err}
	if resp.Body != nil {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if env, derr := buko.DecodeEnvelope(body); derr == nil {
			f.code = env.Code
			f.retryAfter = time.Duration(env.RetryAfter) * time.Second
		}
	}
	if v, perr := strconv.Atoi(strings.TrimSpace(resp.Header.Get("Retry-After"))); perr == nil && v > 0 {
		f.retryAfter = max(f.retryAfter, min(time.Duration(v)*time.Second, buko.MaxRetryAfter))
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || f.code == buko.CodeUnauthorized:
		f.cause = causeUnauthorized
	case resp.StatusCode == http.StatusTooManyRequests || f.code == buko.CodeRateLimited:
		f.cause = causeRateLimited
	case resp.StatusCode == http.StatusConflict || f.code == buko.CodeGatewayConnectionLimit:
		f.cause = causeConnLimit
	default:
		f.cause = causeUpgradeFailed
	}
	return f
}

// connEnd says how a socket ended.
type connEnd struct {
	cause string
	code  websocket.StatusCode // -1: no close frame
	lived time.Duration
	err   error
}

// serve runs one socket: the session's only reading goroutine. It answers
// pings, files updates, and holds back (stops reading) while MaxPending
// updates are in memory. It returns when the socket ends.
func (s *Session) serve(g *gwConn) connEnd {
	s.mu.Lock()
	s.conn = g
	s.connAcked = ""
	s.broadcastLocked()
	s.mu.Unlock()
	s.setState(StateLive, causeConnected)
	s.maybeAck() // tell the server at once what was handed off before this socket

	end := s.readFrames(g)

	s.mu.Lock()
	s.conn = nil
	s.broadcastLocked()
	s.mu.Unlock()
	_ = g.c.CloseNow()
	g.stopWatchdog()
	g.stopHard()
	end.lived = time.Since(g.start)
	return end
}

func (s *Session) readFrames(g *gwConn) connEnd {
	for {
		if !s.waitCapacity(g) {
			return s.classifyEnd(g, nil)
		}
		typ, data, err := g.c.Read(context.Background())
		if err != nil {
			return s.classifyEnd(g, err)
		}
		g.touch()
		if typ != websocket.MessageText {
			s.m.frame(frameBinary)
			s.log.Warn().Int("bytes", len(data)).Msg("binary gateway message ignored")
			continue
		}
		f, err := buko.DecodeFrame(data)
		if err != nil {
			s.m.frame(frameInvalid)
			if bad, ok := buko.AsUndecodable(err); ok {
				// Possibly an update: kept as a dead letter, acked (if it has
				// an id) only once that is stored.
				s.log.Warn().Str("update_id", string(bad.UpdateID)).Int("bytes", len(data)).
					Msg("unreadable gateway update frame")
				s.receiveUndecodable(bad)
				continue
			}
			s.log.Warn().Int("bytes", len(data)).Msg("unreadable gateway frame ignored")
			continue
		}
		switch f.Type {
		case buko.FrameUpdate:
			s.m.frame(frameUpdate)
			s.receive(f.Update)
		case buko.FramePing:
			s.m.frame(framePing)
			if err := g.write(buko.PongFrame()); err != nil {
				return s.classifyEnd(g, err)
			}
		case buko.FramePong:
			s.m.frame(framePong)
		case buko.FrameAck:
			s.m.frame(frameAck)
		default:
			s.m.frame(frameUnknown)
			s.log.Info().Str("frame_type", truncate(f.Type, 40)).Msg("unknown gateway frame type ignored")
		}
	}
}

// waitCapacity holds the reader back while MaxPending updates are in memory
// (never while draining: nothing new is accepted then). It returns false if
// the socket was aborted or the session stopped hard meanwhile.
func (s *Session) waitCapacity(g *gwConn) bool {
	paused := false
	defer func() {
		if paused {
			g.touch()
			g.paused.Store(false)
		}
	}()
	for {
		s.mu.Lock()
		if len(s.w.pending) < s.cfg.MaxPending || s.draining {
			s.mu.Unlock()
			return true
		}
		ch := s.waitChLocked()
		s.mu.Unlock()
		if !paused {
			paused = true
			g.paused.Store(true)
			s.m.paused()
			s.log.Debug().Int("max_pending", s.cfg.MaxPending).Msg("back-pressure: reading paused")
		}
		select {
		case <-ch:
		case <-g.aborted:
			return false
		case <-s.runCtx.Done():
			return false
		}
	}
}

func (s *Session) classifyEnd(g *gwConn, err error) connEnd {
	end := connEnd{code: websocket.CloseStatus(err), err: err}
	switch {
	case g.silent.Load():
		end.cause = causeSilence
	case g.abortCause.Load() != nil:
		end.cause = *g.abortCause.Load()
	case s.runCtx.Err() != nil:
		end.cause = causeStop
	default:
		end.cause = closeCause(end.code, err)
	}
	return end
}

func closeCause(code websocket.StatusCode, err error) string {
	switch code {
	case buko.CloseTokenRevoked:
		return causeTokenRevoked
	case buko.CloseReplaced:
		return causeReplaced
	case buko.ClosePingTimeout:
		return causePingTimeout
	case buko.CloseBadFrame:
		return causeBadFrame
	case buko.CloseGoingAway:
		return causeGoingAway
	case buko.CloseInternal:
		return causeServerError
	case websocket.StatusNormalClosure:
		return causeClosed
	case -1:
		if errors.Is(err, websocket.ErrMessageTooBig) {
			return causeCloseOther
		}
		return causeNetwork
	}
	return causeCloseOther
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
