package browser

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"

	"buko.app/agentrunner/internal/testsupport"
)

// recorder is a testing.TB that keeps what Errorf reports instead of failing.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) reported() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

// TestBrowser starts Chromium, waits on a page, saves a PNG screenshot into
// $AGENTRUNNER_TEST_ARTIFACTS and reports an exception the page did not catch.
func TestBrowser(t *testing.T) {
	Require(t)
	dir := t.TempDir()
	t.Setenv("AGENTRUNNER_TEST_ARTIFACTS", dir)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(`<!doctype html><title>t</title><p id="p" data-testid="para">hi</p>
<button id="boom" onclick="document.body.dataset.clicked = 'yes'; throw new Error('boom here')">boom</button>`))
	}))
	t.Cleanup(srv.Close)

	rec := &recorder{TB: t}
	// Runs after the browser's cleanup: that must have reported nothing more
	// (no process left behind, the profile removed).
	t.Cleanup(func() {
		if errs := rec.reported(); len(errs) > 1 {
			t.Errorf("the browser's cleanup reported %q", errs[1:])
		}
	})
	b := New(rec)
	b.Do("open the page", chromedp.Navigate(srv.URL))
	if got := b.WaitString("the paragraph", `(sel) => { const p = document.querySelector(sel); return p ? p.textContent : false; }`, TestID("para")); got != "hi" {
		t.Fatalf("WaitString = %q, want hi", got)
	}
	if got := b.Eval(`document.title`); got != "t" {
		t.Fatalf("Eval(document.title) = %q", got)
	}
	p := b.Screenshot("shot.png")
	if !strings.HasPrefix(p, dir) {
		t.Fatalf("screenshot at %s, want it in %s", p, dir)
	}
	png, err := os.ReadFile(p)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("the screenshot is not a PNG (%v)", err)
	}

	b.Do("click the throwing button", chromedp.Click(chromedp.ID("boom")))
	b.WaitFn("the click", `() => document.body.dataset.clicked === 'yes'`)
	testsupport.Within(t, "the uncaught exception to be reported", StepTimeout, func() bool {
		b.NoExceptions()
		errs := rec.reported()
		if len(errs) > 0 && (len(errs) != 1 || !strings.Contains(errs[0], "boom here")) {
			t.Fatalf("reported %q, want the one exception", errs)
		}
		return len(errs) > 0
	})
}

func TestFileName(t *testing.T) {
	if got := fileName("TestDev/browser x"); got != "TestDev-browser-x" {
		t.Fatalf("fileName = %q", got)
	}
}
