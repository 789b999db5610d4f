package web_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"buko.app/agentrunner/buko/sim/web"
)

func get(t *testing.T, h http.Handler, method, path string, hdr map[string]string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestHandlerServesThePage(t *testing.T) {
	h := web.Handler()
	for _, tc := range []struct {
		path, ctype, contains string
	}{
		{"/", "text/html; charset=utf-8", `<script src="/app.js"`},
		{"/index.html", "text/html; charset=utf-8", `id="transcript"`},
		{"/app.js", "text/javascript; charset=utf-8", "'use strict'"},
		{"/style.css", "text/css; charset=utf-8", ".transcript"},
		{"/favicon.svg", "image/svg+xml", "<svg"},
	} {
		r := get(t, h, http.MethodGet, tc.path, nil)
		if r.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", tc.path, r.StatusCode)
		}
		if got := r.Header.Get("Content-Type"); got != tc.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.ctype)
		}
		if got := r.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", tc.path, got)
		}
		if got := r.Header.Get("Referrer-Policy"); got != "no-referrer" {
			t.Errorf("GET %s: Referrer-Policy %q", tc.path, got)
		}
		if b := body(t, r); !strings.Contains(b, tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.contains)
		}
	}
}

func TestHandlerPageIsLockedDown(t *testing.T) {
	r := get(t, web.Handler(), http.MethodGet, "/", nil)
	csp := r.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("Content-Security-Policy %q allows inline or eval", csp)
	}
	page := body(t, r)
	// No inline script, no inline handlers, nothing from another origin.
	if regexp.MustCompile(`<script>|<script [^>]*>[^<]`).MatchString(page) {
		t.Error("index.html has an inline script")
	}
	if regexp.MustCompile(`\son[a-z]+=`).MatchString(page) {
		t.Error("index.html has an inline event handler")
	}
	if regexp.MustCompile(`(src|href)="(https?:)?//`).MatchString(page) {
		t.Error("index.html loads something from another origin")
	}
}

func TestHandlerScriptNeverParsesServerText(t *testing.T) {
	js := body(t, get(t, web.Handler(), http.MethodGet, "/app.js", nil))
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(js, bad) {
			t.Errorf("app.js uses %s; text must go in with textContent", bad)
		}
	}
}

func TestHandlerConditionalGet(t *testing.T) {
	h := web.Handler()
	r := get(t, h, http.MethodGet, "/app.js", nil)
	etag := r.Header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	r = get(t, h, http.MethodGet, "/app.js", map[string]string{"If-None-Match": etag})
	if r.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match with the ETag: %d, want 304", r.StatusCode)
	}
	r = get(t, h, http.MethodHead, "/", nil)
	if r.StatusCode != http.StatusOK || body(t, r) != "" {
		t.Fatalf("HEAD /: %d", r.StatusCode)
	}
}

func TestHandlerRejectsTheRest(t *testing.T) {
	h := web.Handler()
	for _, p := range []string{"/nope", "/static/app.js", "/../web.go", "/web.go", "/app.js/", "/index.html/x"} {
		if r := get(t, h, http.MethodGet, p, nil); r.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, r.StatusCode)
		}
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		r := get(t, h, m, "/", nil)
		if r.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /: %d, want 405", m, r.StatusCode)
		}
		if r.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s /: Allow %q", m, r.Header.Get("Allow"))
		}
	}
}
