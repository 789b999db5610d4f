package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"buko.app/agentrunner/buko/sim"
)

func newSimCmd(g *globals) *cobra.Command {
	var (
		addr           string
		adminTokenFile string
		shutdownGrace  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run the Buko simulator: Bot API, Gateway, control API and web chat on one port",
		Long: `Run the Buko simulator: an in-memory Buko that speaks the Bot API (POST /bot/<method>),
the Bot Gateway (GET /bot/ws), a control API for tests and tools under /sim/, and
a web chat page at / where you can create users, start bots and chat with them.

State lives in memory and is gone when the process ends. The control API needs no
bot token; when --admin-token-file is given it requires "Authorization: Bearer <that token>".
The decisions the simulator makes where Buko's docs are silent are in docs/simulator.md.`,
		Example: `  # run it, then open http://127.0.0.1:8081/ in a browser
  agentrunner sim --addr 127.0.0.1:8081

  # create a bot and get its token
  curl -s -XPOST localhost:8081/sim/bots -d '{"handle":"echo_bot","display_name":"Echo"}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts := sim.Options{Logger: g.log.With().Str("component", "sim").Logger()}
			if adminTokenFile != "" {
				tok, err := readTokenFile("--admin-token-file", adminTokenFile)
				if err != nil {
					return err
				}
				opts.AdminToken = tok
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listen on %s: %w", addr, err)
			}
			s := sim.New(opts)
			srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
			g.log.Info().Str("addr", "http://"+ln.Addr().String()).Msg("simulator listening; web chat at /")
			return serveUntilDone(cmd.Context(), srv, ln, shutdownGrace, s.Close)
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "127.0.0.1:8081", "address to listen on")
	f.StringVar(&adminTokenFile, "admin-token-file", "", "file holding the bearer token the control API requires (none: unguarded)")
	f.DurationVar(&shutdownGrace, "shutdown-grace", 5*time.Second, "how long to wait for requests in flight on shutdown")
	envFlag(f, "addr", "AGENTRUNNER_SIM_ADDR")
	envFlag(f, "admin-token-file", "AGENTRUNNER_SIM_ADMIN_TOKEN_FILE")
	return cmd
}

// serveUntilDone serves srv on ln until ctx ends, then runs beforeShutdown
// (closing long-lived connections such as WebSockets) and shuts down within grace.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration, beforeShutdown func()) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	if beforeShutdown != nil {
		beforeShutdown()
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
