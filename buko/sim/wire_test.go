package sim_test

// The simulator's wire format, byte for byte: the Bot API's envelope and the
// control API's bare answers and error envelope, as httpapi writes them.

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"buko.app/agentrunner/buko/sim"
)

func TestWireFormatIsPinned(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok := e.bot(sim.BotSettings{Tier: "free"})
	get := func(method, path, auth, body string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, c := range []struct {
		name, method, path, auth, body string
		status                         int
		want                           string
	}{
		{"bot api error", http.MethodPost, "/bot/getMe", "", "", 401,
			`{"ok":false,"error_code":401,"code":"UNAUTHORIZED","description":"missing Authorization header; send Authorization: Bot \u003ctoken\u003e"}` + "\n"},
		{"bot api result", http.MethodPost, "/bot/sendChatAction", "Bot " + tok.Reveal(), `{"chat_id":"nope","action":"typing"}`, 404,
			`{"ok":false,"error_code":404,"code":"CHAT_NOT_FOUND","description":"chat not found"}` + "\n"},
		{"control error", http.MethodGet, "/sim/nothing", "", "", 404,
			`{"ok":false,"error_code":404,"code":"NOT_FOUND","description":"no control endpoint GET /sim/nothing"}` + "\n"},
		{"control answer", http.MethodPost, "/sim/users", "", `{"display_name":"Ann"}`, 200,
			`{"user_id":"usr_`},
	} {
		resp, body := get(c.method, c.path, c.auth, c.body)
		if resp.StatusCode != c.status || !strings.HasPrefix(body, c.want) || resp.Header.Get("Content-Type") != "application/json" ||
			resp.Header.Get("Cache-Control") != "no-store" || !strings.HasSuffix(body, "}\n") {
			t.Errorf("%s: %d %q %v, want %d %q", c.name, resp.StatusCode, body, resp.Header, c.status, c.want)
		}
	}
	// A rate-limited call carries retry_after in the body and the header.
	for range 100 {
		resp, body := get(http.MethodPost, "/bot/getUpdates", "Bot "+tok.Reveal(), "")
		if resp.StatusCode == http.StatusTooManyRequests {
			if resp.Header.Get("Retry-After") == "" || !strings.Contains(body, `"retry_after":`) || !strings.HasPrefix(body, `{"ok":false,"error_code":429,"code":"RATE_LIMITED",`) {
				t.Fatalf("429: %q %v", body, resp.Header)
			}
			return
		}
	}
	t.Fatal("the free tier never rate-limited getUpdates")
}
