package bench

import (
	"bytes"
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"buko.app/agentrunner/buko/sim"
)

// newEnv is an in-process simulator and an Env on it.
func newEnv(t *testing.T, timeout time.Duration) (Env, *bytes.Buffer) {
	t.Helper()
	s := sim.New(sim.Options{})
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	var warnings bytes.Buffer
	sc := sim.NewControl(srv.URL, sim.ControlOptions{HTTPClient: PooledClient(4)})
	t.Cleanup(sc.CloseIdleConnections)
	return Env{Sim: sc, Timeout: timeout, Warnings: &warnings}, &warnings
}

// The Gateway scenario's sockets are all closed and their readers gone when
// Run returns (TestMain checks for goroutines left behind).
func TestGatewayRunCountsAndCloses(t *testing.T) {
	env, _ := newEnv(t, time.Minute)
	res, err := Gateway{Bots: 3, Updates: 60, Producers: 4}.Run(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sockets != 3 || res.Delivered != 60 || res.Acked != 60 || res.SetupUpdatesDelivered != 6 || res.Redelivered != 0 {
		t.Fatalf("%+v", res)
	}
	st, err := env.Sim.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.GatewayOpen != 0 {
		t.Fatalf("%d sockets left open", st.GatewayOpen)
	}
}

func TestEchoRunWithNobodyAnswering(t *testing.T) {
	env, warnings := newEnv(t, 30*time.Millisecond)
	if _, err := env.Sim.CreateBot(context.Background(), sim.BotSettings{Handle: "silent_bot"}); err != nil {
		t.Fatal(err)
	}
	res, err := Echo{Bot: "@SILENT_bot", Messages: 3, Concurrency: 2, PollInterval: time.Millisecond}.Run(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 3 || res.Lost != 3 || res.Replied != 0 || res.Concurrency != 2 || res.LatencyMS != (LatencySummary{}) {
		t.Fatalf("%+v", res)
	}
	if !strings.Contains(warnings.String(), "warning: @silent_bot has no Gateway socket open") {
		t.Fatalf("warnings: %q", warnings.String())
	}

	_, err = Echo{Bot: "nobody_bot", Messages: 1, Concurrency: 1, PollInterval: time.Millisecond}.Run(context.Background(), env)
	var unknown *UnknownBotError
	if !errors.As(err, &unknown) || unknown.Known != 1 || !strings.Contains(err.Error(), "has no such bot (it has 1;") {
		t.Fatalf("want an *UnknownBotError, got %v", err)
	}
	if _, err := (Echo{Bot: "silent_bot"}).Run(context.Background(), env); err == nil {
		t.Fatal("an Echo of zero messages ran")
	}
}
