// Package runnertest owns test fixtures for the runner's ownership tests: a
// TCP proxy in front of Postgres that a test can cut (a network partition
// between one replica and the database) and restore.
package runnertest

import (
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy forwards TCP connections from a loopback port to a target address.
// Cut makes it a black hole: open connections stall (nothing is forwarded,
// nothing is closed) and new ones are accepted but never answered, as with a
// partition; Restore closes the stalled connections and forwards again.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	closed bool
	cut    bool
	delay  time.Duration // added before forwarding each chunk (SetDelay)
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	gate   chan struct{} // closed while not cut
}

// NewProxy starts a proxy to target on 127.0.0.1:0; it is closed at test cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("runnertest: listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, gate: make(chan struct{})}
	close(p.gate)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// DSN returns dsn (a postgres:// URL) with its host and port replaced by the proxy's.
func (p *Proxy) DSN(t testing.TB, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || !strings.HasPrefix(u.Scheme, "postgres") {
		t.Fatalf("runnertest: want a postgres:// URL, got an unparsable one")
	}
	u.Host = p.Addr()
	return u.String()
}

// Cut partitions: from now on no byte passes in either direction.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut {
		p.cut = true
		p.gate = make(chan struct{})
	}
}

// SetDelay makes the proxy hold every chunk for d before forwarding it, in
// both directions (a slow database: each round trip takes 2d more); 0 ends it.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Restore ends the partition: stalled connections are closed (their clients
// see errors and reconnect) and new connections are forwarded again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut {
		return
	}
	p.cut = false
	for c := range p.conns {
		_ = c.Close()
	}
	close(p.gate)
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	if p.cut {
		p.cut = false
		close(p.gate)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			_ = c.Close()
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	<-gate // a connection made during a cut waits (until Restore or Close)
	p.mu.Lock()
	_, open := p.conns[client]
	p.mu.Unlock()
	if !open {
		return
	}
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(server) {
		_ = server.Close()
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
}

// pipe copies src to dst in chunks, holding each chunk while the proxy is cut.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer func() { _ = dst.Close(); _ = src.Close() }()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate, delay := p.gate, p.delay
			p.mu.Unlock()
			if delay > 0 {
				time.Sleep(delay) // the simulated latency itself
			}
			<-gate
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: both sides are closed by the defer
		}
	}
}
