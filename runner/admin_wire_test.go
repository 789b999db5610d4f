package runner

// The admin API's wire format, byte for byte: indented JSON answers and
// {"error": "..."} refusals, as httpapi writes them.

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestAdminWireFormatIsPinned(t *testing.T) {
	srv := httptest.NewServer(NewAdmin(AdminConfig{Token: "t0ken-for-the-wire-test", RunnerID: "r1"}).Handler())
	defer srv.Close()
	for _, c := range []struct {
		method, path, auth string
		status             int
		want               string
	}{
		{http.MethodGet, "/healthz", "", 200, "{\n  \"runner_id\": \"r1\",\n  \"status\": \"ok\"\n}\n"},
		{http.MethodGet, "/api/v1/nothing", "", 404, "{\n  \"error\": \"no such endpoint: see docs/admin.md\"\n}\n"},
		{http.MethodDelete, "/api/v1/bots", "", 405, "{\n  \"error\": \"method not allowed: use GET\"\n}\n"},
		{http.MethodGet, "/api/v1/bots", "", 401, "{\n  \"error\": \"authentication required: send Authorization: Bearer \\u003cadmin token\\u003e\"\n}\n"},
		{http.MethodPost, "/api/v1/bots/b1/pause", "Bearer wrong", 401, "{\n  \"error\": \"authentication required: send Authorization: Bearer \\u003cadmin token\\u003e\"\n}\n"},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || string(b) != c.want || resp.Header.Get("Content-Type") != "application/json; charset=utf-8" {
			t.Errorf("%s %s: %d %q %q, want %d %q", c.method, c.path, resp.StatusCode, b, resp.Header.Get("Content-Type"), c.status, c.want)
		}
		if c.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", c.method, c.path)
		}
	}
}
