// Package bench measures a running system from outside, through the Buko
// simulator's control API, the way on-call checks a deploy: the simulator
// plays the users and its transcripts show what the bots answered, so the
// figures are what a user sees, end to end. Nothing inside agentrunner is
// touched.
//
// A run is a scenario (Echo, Gateway) driven against an Env (the simulator
// and the run's shared settings) that returns a Report, which writes itself
// as a table or as JSON. cmd/agentrunner's bench commands are flags around
// them; docs/BENCHMARKS.md has the figures.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"buko.app/agentrunner/buko/sim"
)

// Env is what every scenario runs against.
type Env struct {
	// Sim is the simulator's control API.
	Sim *sim.Control
	// Timeout bounds the waits of a run: for Echo, a message without a
	// reply this long after it was sent is lost; for Gateway, the most to
	// wait for deliveries and acks.
	Timeout time.Duration
	// Bar, when not nil, makes the progress bar of a run's total steps.
	Bar func(total int, what, unit string) Progress
	// Warnings gets warnings about the system measured (nil: none written).
	Warnings io.Writer
}

// Progress is a progress bar: steps done (from several goroutines at
// once), and its end.
type Progress interface {
	Add(n int) error
	Exit() error
}

func (e Env) warn(format string, args ...any) {
	if e.Warnings != nil {
		fmt.Fprintf(e.Warnings, "warning: "+format+"\n", args...)
	}
}

// noProgress is the bar of an Env without one.
type noProgress struct{}

func (noProgress) Add(int) error { return nil }
func (noProgress) Exit() error   { return nil }

// bar is the run's progress bar (one that draws nothing without e.Bar).
func (e Env) bar(total int, what, unit string) Progress {
	if e.Bar == nil {
		return noProgress{}
	}
	return e.Bar(total, what, unit)
}

// runID names the users, chats and bots a run leaves in the simulator.
func runID() string { return time.Now().UTC().Format("150405.000") }

// A Report is the result of a run: JSON as it is, or a table.
type Report interface {
	WriteText(w io.Writer) error
}

// Write writes r as a table (format "text") or as indented JSON ("json").
func Write(w io.Writer, format string, r Report) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	return r.WriteText(w)
}

// PooledClient is an HTTP client for the control API whose idle pool fits
// conns concurrent calls.
func PooledClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = conns + 4
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
