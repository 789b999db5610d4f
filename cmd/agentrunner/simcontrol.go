package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"buko.app/agentrunner/buko"
)

// simControl calls the simulator's control API.
type simControl struct {
	base       string
	adminToken string
	hc         *http.Client
}

// simCallError is a control-API call the simulator answered with 4xx/5xx.
type simCallError struct {
	Call        string // "POST /sim/users"
	Status      int
	Code        string
	Description string
}

func (e *simCallError) Error() string {
	msg := fmt.Sprintf("simulator %s: HTTP %d", e.Call, e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Description != "" {
		msg += ": " + e.Description
	}
	if e.Status == http.StatusUnauthorized {
		msg += " (a guarded simulator: pass --admin-token-file)"
	}
	return msg
}

func (sc *simControl) client(conns int) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = conns + 4
	sc.hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func (sc *simControl) close() {
	if sc.hc != nil {
		sc.hc.CloseIdleConnections()
	}
}

// call sends one control-API request; in (if not nil) is the JSON body, out
// (if not nil) receives the JSON answer.
func (sc *simControl) call(ctx context.Context, method, path string, in, out any) error {
	name := method + " " + path
	if i := strings.IndexByte(name, '?'); i >= 0 {
		name = name[:i]
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("simulator %s: %w", name, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, sc.base+path, body)
	if err != nil {
		return fmt.Errorf("simulator %s: %w", name, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if sc.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+sc.adminToken)
	}
	resp, err := sc.hc.Do(req)
	if err != nil {
		return fmt.Errorf("simulator %s: %w", name, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("simulator %s: reading the answer: %w", name, err)
	}
	if resp.StatusCode >= 400 {
		ce := &simCallError{Call: name, Status: resp.StatusCode}
		var env buko.Envelope
		if json.Unmarshal(data, &env) == nil {
			ce.Code, ce.Description = env.Code, sanitizeForTerminal(env.Description, 200)
		}
		if ce.Code == "" && ce.Description == "" && resp.StatusCode == http.StatusNotFound {
			ce.Description = "not found (is --sim-url a Buko simulator?)"
		}
		return ce
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("simulator %s: HTTP %d with an answer that is not the expected JSON (is --sim-url a Buko simulator?): %w", name, resp.StatusCode, err)
	}
	return nil
}

// sanitizeForTerminal keeps printable characters of s, at most n runes.
func sanitizeForTerminal(s string, n int) string {
	var b strings.Builder
	for _, r := range s {
		if n == 0 {
			b.WriteString("…")
			break
		}
		if r < 0x20 || r == 0x7f {
			r = ' '
		}
		b.WriteRune(r)
		n--
	}
	return b.String()
}
