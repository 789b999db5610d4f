package sim

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
)

// Close codes the server sends (docs/architecture.md §3).
const (
	closeGoingAway    = websocket.StatusCode(buko.CloseGoingAway)
	closePingTimeout  = websocket.StatusCode(buko.ClosePingTimeout)
	closeTokenRevoked = websocket.StatusCode(buko.CloseTokenRevoked)
	closeBadFrame     = websocket.StatusCode(buko.CloseBadFrame)
	closeReplaced     = websocket.StatusCode(buko.CloseReplaced)
)

// gwReadLimit bounds one client frame; clients only send acks and pings.
const gwReadLimit = 64 << 10

// gwConn is one Gateway socket. Its goroutines: the reader (the HTTP handler
// goroutine, for the socket's whole life) and a writer that exists only while
// there is something to write (updates within the window, ping, pong, the
// close frame), so an idle socket costs one goroutine. All fields but s, b
// and ws are guarded by b.mu; ws is set once, under b.mu, after the upgrade.
type gwConn struct {
	s  *Server
	b  *bot
	ws *websocket.Conn

	sentMax     uint64    // the highest id written on this socket
	writing     bool      // a writer goroutine runs (or the socket is done writing)
	pingDue     bool      // write {"type":"ping"}
	pongDue     bool      // write {"type":"pong"}
	pingSince   time.Time // when the oldest unanswered ping was queued; zero if none
	closeCode   websocket.StatusCode
	closeReason string
	attached    bool // listed in b.conns
	ended       bool // the reader has finished
	timer       *time.Timer
}

// serveGateway upgrades GET /bot/ws: auth (401), the attempt limit (429),
// the connection limit (409 or replace the oldest with 4009), the handshake,
// then hands the socket to its reader goroutine.
func (s *Server) serveGateway(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.rest.Fail(w, r, &apiError{Status: http.StatusMethodNotAllowed, Code: buko.CodeBadRequest, Message: "the Gateway is GET /bot/ws with a WebSocket upgrade"})
		return
	}
	b, sum, _, aerr := s.authenticate(r)
	if aerr != nil {
		s.stats.gatewayUnauthorized.Add(1)
		s.rest.Fail(w, r, aerr)
		return
	}
	c := &gwConn{s: s, b: b}
	if aerr := s.reserveSlot(c, sum); aerr != nil {
		s.rest.Fail(w, r, aerr)
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			s.wg.Done()
		}
	}()

	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		b.mu.Lock()
		c.detachLocked()
		c.ended = true
		b.mu.Unlock()
		s.log.Debug().Err(err).Str("bot_id", b.id).Msg("sim: gateway upgrade failed")
		return
	}
	ws.SetReadLimit(gwReadLimit)
	s.stats.gatewayConnections.Add(1)
	s.log.Debug().Str("bot_id", b.id).Msg("sim: gateway socket open")

	b.mu.Lock()
	c.ws = ws
	if c.closeCode == 0 {
		c.timer = time.AfterFunc(s.opts.PingInterval, c.pingTick)
	}
	c.kickLocked() // the backlog, or the close frame if it was closed meanwhile
	b.mu.Unlock()

	// The reader runs in a fresh goroutine and the handler returns: the HTTP
	// server's connection state and the handler's grown stack are freed,
	// which keeps an idle socket small.
	handedOff = true
	go c.run()
}

// run is the socket's reader goroutine: it reads until the socket ends, then
// releases the socket's slot and timer.
func (c *gwConn) run() {
	s, b, ws := c.s, c.b, c.ws
	defer s.wg.Done()
	c.readLoop()

	b.mu.Lock()
	if c.closeCode == 0 { // the peer went away
		c.detachLocked()
	}
	c.ended = true
	if c.timer != nil {
		c.timer.Stop()
	}
	b.mu.Unlock()
	_ = ws.CloseNow()
	s.log.Debug().Str("bot_id", b.id).Msg("sim: gateway socket closed")
}

// reserveSlot checks the attempt quota and the connection limit and lists
// c among the bot's open sockets, before the handshake: two concurrent
// upgrades cannot both pass the limit, and getUpdates sees the socket at
// once. On success it counts c in s.wg. Server.mu is held throughout, so a
// concurrent Close either refuses c or finds it listed and closes it.
func (s *Server) reserveSlot(c *gwConn, tokenHash [32]byte) *apiError {
	b := c.b
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return &apiError{Status: http.StatusServiceUnavailable, Code: buko.CodeInternal, Message: "the simulator is shutting down"}
	}
	if b.tokenHash != tokenHash { // rotated since authenticate: the old token fails at once
		s.stats.gatewayUnauthorized.Add(1)
		return errUnauthorized("unknown or revoked bot token")
	}
	prof := b.prof
	b.mu.Lock()
	defer b.mu.Unlock()
	if wait := b.attemptQuota.take(s.now(), s.opts.GatewayAttemptsPerMinute, 0); wait > 0 {
		s.stats.rateLimited.Add(1)
		return errRateLimited(wait, "too many Gateway connection attempts for this bot; retry later")
	}
	if len(b.conns) >= prof.connLimit {
		if prof.policy != PolicyReplaceOldest {
			s.stats.gatewayRejectedLimit.Add(1)
			return &apiError{Status: http.StatusConflict, Code: buko.CodeGatewayConnectionLimit,
				Message: "the bot already has its gateway_connection_limit of open Gateway connections"}
		}
		for len(b.conns) >= prof.connLimit && len(b.conns) > 0 {
			b.conns[0].closeLocked(closeReplaced, "replaced by a newer connection")
			s.stats.gatewayReplaced.Add(1)
		}
	}
	c.attached = true
	b.conns = append(b.conns, c)
	s.stats.gatewayOpen.Add(1)
	s.stats.noteConcurrent(len(b.conns))
	b.wakePollsLocked()
	s.wg.Add(1) // closed is false under the lock: Close has not begun waiting
	return nil
}

// readLoop reads client frames until the socket fails or closes.
func (c *gwConn) readLoop() {
	for {
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			return
		}
		var f buko.Frame
		var bad string
		if typ != websocket.MessageText {
			bad = "binary frames are not accepted"
		} else if f, err = buko.DecodeFrame(data); err != nil {
			bad = "malformed frame"
		}
		b := c.b
		b.mu.Lock()
		switch {
		case c.closeCode != 0: // closing: everything else is ignored
		case bad != "":
			c.closeLocked(closeBadFrame, bad)
		case f.Type == buko.FrameAck:
			c.s.ackLocked(b, f.UpdateID)
		case f.Type == buko.FramePing:
			c.pongDue = true
			c.kickLocked()
		case f.Type == buko.FramePong:
			c.pingSince = time.Time{}
		default:
			c.closeLocked(closeBadFrame, "unexpected frame type")
		}
		b.mu.Unlock()
	}
}

// ackLocked applies a cumulative ack. An ack above every id handed out so far
// (by any socket or poll of the bot) or below the cursor changes nothing.
func (s *Server) ackLocked(b *bot, id buko.UpdateID) {
	v, _, ok := parseCursor(id)
	if !ok || v > b.sentMax {
		return
	}
	s.confirmLocked(b, v)
}

// closeLocked starts closing the socket with code: it stops counting as open
// at once (so a reconnect is not refused, and getUpdates works again), and
// its writer sends the close frame.
func (c *gwConn) closeLocked(code websocket.StatusCode, reason string) {
	if c.closeCode != 0 {
		return
	}
	c.closeCode, c.closeReason = code, reason
	c.detachLocked()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.s.stats.countClose(int(code))
	c.kickLocked()
}

func (c *gwConn) detachLocked() {
	if !c.attached {
		return
	}
	c.attached = false
	c.s.stats.gatewayOpen.Add(-1)
	conns := c.b.conns
	for i, x := range conns {
		if x == c {
			copy(conns[i:], conns[i+1:])
			conns[len(conns)-1] = nil
			c.b.conns = conns[:len(conns)-1]
			break
		}
	}
	if len(c.b.conns) == 0 {
		c.b.conns = nil
	}
}

// pingTick runs every PingInterval: it closes the socket with 4000 when a ping
// has been unanswered for PongTimeout, else queues a ping.
func (c *gwConn) pingTick() {
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.closeCode != 0 || c.ended {
		return
	}
	now := time.Now()
	if !c.pingSince.IsZero() && now.Sub(c.pingSince) >= c.s.opts.PongTimeout {
		c.closeLocked(closePingTimeout, "ping timeout")
		return
	}
	if c.pingSince.IsZero() {
		c.pingSince = now
	}
	c.pingDue = true
	c.kickLocked()
	c.timer.Reset(c.s.opts.PingInterval)
}

// nextLocked returns the index in b.log of the next update to write, or -1
// when none is due or the window of unacked updates is full.
func (c *gwConn) nextLocked() int {
	log := c.b.log
	inFlight := sort.Search(len(log), func(i int) bool { return log[i].id > c.sentMax })
	if inFlight >= len(log) || inFlight >= c.s.opts.InFlightWindow {
		return -1
	}
	return inFlight
}

// kickLocked starts the writer if the socket has something to write.
func (c *gwConn) kickLocked() {
	if c.writing || c.ws == nil || c.ended {
		return
	}
	if c.closeCode == 0 && !c.pingDue && !c.pongDue && c.nextLocked() < 0 {
		return
	}
	c.writing = true
	c.s.wg.Add(1) // the reader holds a count, so this never races with Wait
	go c.writeLoop()
}

// writeLoop writes what is due, one frame at a time, and exits when nothing
// is left. After the close frame or a failed write it leaves writing set, so
// no writer starts again.
func (c *gwConn) writeLoop() {
	defer c.s.wg.Done()
	b := c.b
	st := c.s.stats
	for {
		b.mu.Lock()
		if c.closeCode != 0 {
			code, reason := c.closeCode, c.closeReason
			b.mu.Unlock()
			_ = c.ws.Close(code, reason)
			return
		}
		var frame []byte
		dup := false
		switch {
		case c.pongDue:
			c.pongDue = false
			frame = buko.PongFrame()
		case c.pingDue:
			c.pingDue = false
			frame = buko.PingFrame()
		default:
			i := c.nextLocked()
			if i < 0 {
				c.writing = false
				b.mu.Unlock()
				return
			}
			drop, duplicate := c.s.chaos.gatewayFrame()
			if drop {
				c.detachLocked()
				b.mu.Unlock()
				st.chaosDropped.Add(1)
				_ = c.ws.CloseNow()
				return
			}
			e := &b.log[i]
			frame, dup = e.frame, duplicate
			c.sentMax = e.id
			b.sentMax = max(b.sentMax, e.id)
			st.updatesDelivered.Add(1)
			if e.delivered {
				st.updatesRedelivered.Add(1)
			}
			e.delivered = true
			if dup {
				st.updatesDelivered.Add(1)
				st.updatesRedelivered.Add(1)
				st.chaosDuplicated.Add(1)
			}
		}
		b.mu.Unlock()
		err := c.write(frame)
		if err == nil && dup {
			err = c.write(frame)
		}
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				c.s.log.Debug().Err(err).Str("bot_id", b.id).Msg("sim: gateway write failed")
			}
			b.mu.Lock()
			c.detachLocked()
			b.mu.Unlock()
			_ = c.ws.CloseNow()
			return
		}
	}
}

func (c *gwConn) write(frame []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.opts.WriteTimeout)
	defer cancel()
	return c.ws.Write(ctx, websocket.MessageText, frame)
}
