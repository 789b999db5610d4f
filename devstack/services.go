package devstack

// services.go starts the in-process parts of the dev stack that stand in
// for the world outside agentrunner: the Buko simulator and the example
// agent service.

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/workflows/agents"
)

// StartSimulator serves a Buko simulator (Bot API, Gateway, web chat) on
// addr and returns its base URL and how to stop it.
func StartSimulator(addr string, log zerolog.Logger) (apiURL string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("simulator listener on %s (set --sim-addr or AGENTRUNNER_SIM_ADDR): %w", addr, err)
	}
	s := sim.New(sim.Options{Logger: log})
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	stop = func() {
		s.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		// Serve may not have run yet, so Shutdown may not know the
		// listener: close it here, or the port still accepts after stop.
		_ = ln.Close()
	}
	return "http://" + ln.Addr().String(), stop, nil
}

// ExampleAgent is the example agent service (docs/agent-protocol.md) on a
// free port of 127.0.0.1.
type ExampleAgent struct {
	URL    string // where the http agent kind posts
	Secret []byte // the secret it signs with
	srv    *http.Server
	ln     net.Listener
}

// StartExampleAgent serves the example agent with a fresh random secret.
func StartExampleAgent() (*ExampleAgent, error) {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret) // crypto/rand.Read never fails on Linux
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("example agent listener: %w", err)
	}
	srv := &http.Server{Handler: agents.ExampleService{Secret: secret}, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &ExampleAgent{URL: "http://" + ln.Addr().String() + "/agent", Secret: secret, srv: srv, ln: ln}, nil
}

// Close stops the service.
func (a *ExampleAgent) Close() {
	_ = a.srv.Close()
	_ = a.ln.Close() // Serve may not have taken it yet
}
