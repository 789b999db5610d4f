package runner

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzReadAction: any body of an admin action is either accepted or refused
// with a 4xx that does not echo it; it never panics.
func FuzzReadAction(f *testing.F) {
	for _, s := range []string{
		"", " ", `{}`, `{"reason":"deploy"}`, `{"reason":1}`, `{"reason":"x","extra":true}`,
		`{"reason":"a"}{"reason":"b"}`, `[`, `null`, `"str"`, `{"reason":"` + strings.Repeat("é", 300) + `"}`,
		strings.Repeat(" ", 5000), "\x00\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest(http.MethodPost, "/api/v1/bots/b/pause", strings.NewReader(body))
		b, err := readAction(r)
		if err == nil {
			if len(b.Reason) > 500 {
				t.Fatalf("accepted a reason of %d bytes", len(b.Reason))
			}
			return
		}
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status < 400 || ae.Status >= 500 {
			t.Fatalf("want a 4xx apiError, got %T %v", err, err)
		}
		// The hint quotes an example body; a body that is part of it is not an echo.
		const hint = `bad request body: want a JSON object like {"reason": "..."}`
		if marker := strings.TrimSpace(body); len(marker) >= 8 && utf8.ValidString(marker) &&
			strings.Contains(ae.Message, marker) && !strings.Contains(hint, marker) {
			t.Fatalf("the error echoes the body: %q", ae.Message)
		}
	})
}
