package agents

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"buko.app/agentrunner/permanent"
)

// countingServer is a real agent service on 127.0.0.1:0 that counts requests
// and answers with no actions (http protocol) or one choice (openai).
func countingServer(t *testing.T) (*httptest.Server, *atomic.Int32, *atomic.Value) {
	t.Helper()
	var n atomic.Int32
	var auth atomic.Value
	auth.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		auth.Store(r.Header.Get("Authorization"))
		if strings.HasSuffix(r.URL.Path, "/chat/completions") {
			_, _ = io.WriteString(w, `{"choices":[{"message":{"content":"hi"}}]}`)
			return
		}
		_, _ = io.WriteString(w, `{"actions":[]}`)
	}))
	t.Cleanup(srv.Close)
	return srv, &n, &auth
}

func TestEnvReferenceOutsideThePrefixIsRefused(t *testing.T) {
	srv, hits, auth := countingServer(t)
	t.Setenv("AGENTS_TEST_DSN", "postgres://user:hunter2@db/prod")
	t.Setenv(EnvSecretPrefix+"AGENTS_OK", "sk-allowed")
	cfg := func(ref string) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"base_url":%q,"model":"m","api_key":%q}`, srv.URL, ref))
	}
	for _, ref := range []string{"env:AGENTS_TEST_DSN", "env:" + EnvSecretPrefix, "env:" + EnvSecretPrefix + "lower", "env:PATH"} {
		if err := Builtin().Check("openai", cfg(ref)); !errors.Is(err, ErrSecretRef) || !strings.Contains(err.Error(), "api_key") {
			t.Errorf("Check %s: want ErrSecretRef naming api_key, got %v", ref, err)
		}
		_, err := Builtin().Build(context.Background(), "openai", cfg(ref), Env{Bot: Bot{ID: "b1"}})
		if !errors.Is(err, ErrSecretRef) || !permanent.Is(err) {
			t.Errorf("Build %s: want a permanent ErrSecretRef, got %v", ref, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error shows the variable's value: %v", err)
		}
	}
	// At use too: resolveSecret refuses a name outside the prefix even when
	// the form check was skipped.
	if _, err := resolveSecret(context.Background(), Env{}, "env:AGENTS_TEST_DSN"); !errors.Is(err, ErrSecretRef) {
		t.Errorf("resolveSecret outside the prefix: %v", err)
	}
	if hits.Load() != 0 {
		t.Fatalf("the service was called %d times with a refused reference", hits.Load())
	}
	a := build(t, "openai", string(cfg("env:"+EnvSecretPrefix+"AGENTS_OK")), Env{Bot: Bot{ID: "b1"}})
	if _, err := a.Handle(context.Background(), Request{Update: msgUpdate("1", "hi")}); err != nil {
		t.Fatal(err)
	}
	if got := auth.Load().(string); got != "Bearer sk-allowed" {
		t.Fatalf("allowed reference: Authorization %q", got)
	}
}

func TestCheckNamesTheFieldAndHidesPlaintext(t *testing.T) {
	for name, tc := range map[string]struct{ kind, cfg, want string }{
		"typo":             {"http", `{"urll":"http://x","secret":"local:v1:x"}`, `"urll"`},
		"wrong type":       {"http", `{"url":"http://x","secret":"local:v1:x","memory_turns":"3"}`, `memory_turns`},
		"bad url":          {"http", `{"url":"x","secret":"local:v1:x"}`, `url`},
		"plaintext secret": {"http", `{"url":"http://x","secret":"sk-live-plaintext-123"}`, `secret`},
		"plaintext key":    {"openai", `{"model":"m","api_key":"sk-live-plaintext-123"}`, `api_key`},
		"long timeout":     {"openai", `{"model":"m","api_key":"local:v1:x","timeout":"1h"}`, `timeout`},
		"echo field":       {"echo", `{"greeting":"hi"}`, `"greeting"`},
		"not an object":    {"openai", `[1]`, `config`},
		"unknown kind":     {"gpt", `{}`, `unknown agent kind`},
	} {
		err := Builtin().Check(tc.kind, json.RawMessage(tc.cfg))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want an error naming %s, got %v", name, tc.want, err)
		}
		if err != nil && strings.Contains(err.Error(), "sk-live") {
			t.Errorf("%s: error quotes the plaintext: %v", name, err)
		}
	}
	for kind, cfg := range map[string]string{
		"echo":   ``,
		"http":   `{"url":"https://agent.example/hook","secret":"vault:v2:abc","timeout":"30s","memory_turns":10}`,
		"openai": `{"model":"m","api_key":"env:AGENTRUNNER_AGENT_SECRET_OPENAI","temperature":0.2}`,
	} {
		if err := Builtin().Check(kind, json.RawMessage(cfg)); err != nil {
			t.Errorf("%s: a good config refused: %v", kind, err)
		}
	}
}

func TestRedirectToAnotherHostIsNotFollowed(t *testing.T) {
	other, otherHits, otherAuth := countingServer(t)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirector.Close)
	secrets := mapSecrets{"b1/local:v1:k": "0123456789abcdef-key"}
	// Even a caller's client that follows everything gets the policy.
	for _, hc := range []*http.Client{nil, {}, NewHTTPClient(ClientOptions{})} {
		env := Env{Bot: Bot{ID: "b1"}, Secrets: secrets, HTTP: hc}
		h := build(t, "http", fmt.Sprintf(`{"url":%q,"secret":"local:v1:k"}`, redirector.URL+"/hook"), env)
		_, err := h.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")})
		if !errors.Is(err, ErrRedirectRefused) || !permanent.Is(err) {
			t.Errorf("http agent: want a permanent ErrRedirectRefused, got %v", err)
		}
		o := build(t, "openai", fmt.Sprintf(`{"base_url":%q,"model":"m","api_key":"local:v1:k"}`, redirector.URL+"/v1"), env)
		_, err = o.Handle(context.Background(), Request{Update: msgUpdate("1", "hi")})
		if !errors.Is(err, ErrRedirectRefused) || !permanent.Is(err) {
			t.Errorf("openai agent: want a permanent ErrRedirectRefused, got %v", err)
		}
	}
	if n := otherHits.Load(); n != 0 {
		t.Fatalf("the other host got %d requests (Authorization %q)", n, otherAuth.Load())
	}
	// A redirect on the same host is followed.
	var same atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/old" {
			http.Redirect(w, r, "/new", http.StatusPermanentRedirect)
			return
		}
		same.Add(1)
		_, _ = io.WriteString(w, `{"actions":[]}`)
	}))
	t.Cleanup(srv.Close)
	h := build(t, "http", fmt.Sprintf(`{"url":%q,"secret":"local:v1:k"}`, srv.URL+"/old"), Env{Bot: Bot{ID: "b1"}, Secrets: secrets})
	if _, err := h.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")}); err != nil || same.Load() != 1 {
		t.Fatalf("same-host redirect: %v (%d requests)", err, same.Load())
	}
}

func TestDenyPrivateRefusesLoopbackAtDialTime(t *testing.T) {
	srv, hits, _ := countingServer(t)
	secrets := mapSecrets{"b1/local:v1:k": "0123456789abcdef-key"}
	port := srv.URL[strings.LastIndex(srv.URL, ":"):]
	deny := NewHTTPClient(ClientOptions{DenyPrivate: true})
	// By IP, and by a name that resolves to loopback (the check sees the resolved address).
	for _, u := range []string{srv.URL, "http://localhost" + port} {
		a := build(t, "http", fmt.Sprintf(`{"url":%q,"secret":"local:v1:k"}`, u), Env{Bot: Bot{ID: "b1"}, Secrets: secrets, HTTP: deny})
		_, err := a.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")})
		if !errors.Is(err, ErrAddressDenied) || !permanent.Is(err) {
			t.Errorf("%s: want a permanent ErrAddressDenied, got %v", u, err)
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("a denied address was reached %d times", hits.Load())
	}
	allow := NewHTTPClient(ClientOptions{})
	a := build(t, "http", fmt.Sprintf(`{"url":%q,"secret":"local:v1:k"}`, srv.URL), Env{Bot: Bot{ID: "b1"}, Secrets: secrets, HTTP: allow})
	if _, err := a.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")}); err != nil || hits.Load() != 1 {
		t.Fatalf("deny-list off: %v (%d requests)", err, hits.Load())
	}
	for addr, public := range map[string]bool{
		"127.0.0.1": false, "::1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false,
		"169.254.169.254": false, "fe80::1": false, "fd00::1": false, "100.64.0.1": false, "0.0.0.0": false,
		"::ffff:127.0.0.1": false, "224.0.0.1": false, "8.8.8.8": true, "2606:4700::1111": true, "1.1.1.1": true,
	} {
		if got := PublicAddr(netip.MustParseAddr(addr)); got != public {
			t.Errorf("PublicAddr(%s) = %v", addr, got)
		}
	}
}

func TestSlowServerTimesOut(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // never answers before the client gives up
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	secrets := mapSecrets{"b1/local:v1:k": "0123456789abcdef-key"}
	// The agent's own timeout is 10s (the default); the client's response
	// header timeout ends the call first.
	hc := NewHTTPClient(ClientOptions{ResponseHeaderTimeout: 100 * time.Millisecond})
	a := build(t, "http", fmt.Sprintf(`{"url":%q,"secret":"local:v1:k"}`, srv.URL), Env{Bot: Bot{ID: "b1"}, Secrets: secrets, HTTP: hc})
	start := time.Now()
	_, err := a.Handle(context.Background(), Request{Bot: Bot{ID: "b1"}, Update: msgUpdate("1", "hi")})
	if err == nil || permanent.Is(err) || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("want a retryable timeout, got %v", err)
	}
	if d := time.Since(start); d >= DefaultHTTPTimeout {
		t.Fatalf("the call took %s: the response header timeout did not apply", d)
	}
	if strings.Contains(err.Error(), srv.URL) {
		t.Errorf("error shows the URL: %v", err)
	}
}
