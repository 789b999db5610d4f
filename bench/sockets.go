package bench

// sockets.go holds the Gateway sockets a bench run opens from this process:
// each reads and acks every update until the run ends.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/vault"
)

// sockets is a set of Gateway sockets with one count of the updates they
// received and the first failure of one of them.
type sockets struct {
	ctx       context.Context // ends the readers
	stop      context.CancelFunc
	dialer    *http.Client
	mu        sync.Mutex
	conns     []*websocket.Conn
	readers   sync.WaitGroup
	delivered atomic.Int64
	failed    chan error // the first socket that ended on its own
}

func newSockets(ctx context.Context) *sockets {
	sctx, stop := context.WithCancel(ctx)
	return &sockets{
		ctx: sctx, stop: stop,
		dialer: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
		failed: make(chan error, 1),
	}
}

// gatewayURL is the simulator's Gateway endpoint.
func gatewayURL(sc *sim.Control) string { return buko.NewClient(sc.BaseURL(), nil).GatewayURL() }

// dial opens the bot's socket and starts reading it.
func (s *sockets) dial(ctx context.Context, wsURL, botID string, tok vault.Token) error {
	conn, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: s.dialer, HTTPHeader: buko.AuthHeader(tok)})
	if err != nil {
		if resp != nil {
			return fmt.Errorf("gateway dial for bot %s: HTTP %d: %w", botID, resp.StatusCode, err)
		}
		return fmt.Errorf("gateway dial for bot %s: %w", botID, err)
	}
	conn.SetReadLimit(buko.MaxFrameBytes)
	s.mu.Lock()
	s.conns = append(s.conns, conn)
	s.mu.Unlock()
	s.readers.Add(1)
	go func() {
		defer s.readers.Done()
		// readAndAck returns only when the socket ends; an end we did not cause is an error.
		if err := readAndAck(s.ctx, conn, &s.delivered); s.ctx.Err() == nil {
			select {
			case s.failed <- fmt.Errorf("gateway socket of bot %s: %w", botID, err):
			default:
			}
		}
	}()
	return nil
}

// close closes the sockets politely, many at a time (each close awaits the
// server's), then stops their readers and waits for them.
func (s *sockets) close() {
	var closing errgroup.Group
	closing.SetLimit(64)
	for _, c := range s.conns {
		closing.Go(func() error { return c.Close(websocket.StatusNormalClosure, "bench done") })
	}
	_ = closing.Wait()
	s.stop()
	s.readers.Wait()
	s.dialer.CloseIdleConnections()
}

// readAndAck reads frames until the socket ends: it acks every update,
// answers pings, and counts updates.
func readAndAck(ctx context.Context, conn *websocket.Conn, n *atomic.Int64) error {
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText {
			continue
		}
		fr, err := buko.DecodeFrame(data)
		if err != nil {
			return err
		}
		switch fr.Type {
		case buko.FrameUpdate:
			n.Add(1)
			if err := conn.Write(ctx, websocket.MessageText, buko.AckFrame(fr.Update.UpdateID)); err != nil {
				return err
			}
		case buko.FramePing:
			if err := conn.Write(ctx, websocket.MessageText, buko.PongFrame()); err != nil {
				return err
			}
		}
	}
}

// await polls done every 2 ms until it is true, a socket fails, ctx ends or
// the deadline passes.
func (s *sockets) await(ctx context.Context, deadline time.Time, done func() (bool, error)) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := done()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out (raise --timeout?)")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-s.failed:
			return err
		case <-t.C:
		}
	}
}
