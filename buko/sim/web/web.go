// Package web owns the simulator's dev chat page: one HTML page with its
// script, style sheet and icon, embedded in the binary and served as they are
// (no framework, no CDN, no build step). The page talks only to the
// simulator's control API under /sim/: it lets a person pick or create a user,
// start a bot, make groups, chat, reply, edit their own messages, block a bot,
// and see the bots' replies appear live by polling the transcript.
//
// The simulator mounts [Handler] at every path that is not under /bot/ or
// /sim/.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

// files holds the page; it is read-only after build.
//
//go:embed static
var files embed.FS

const htmlType = "text/html; charset=utf-8"

// contentType names the type of every extension the page ships, so the
// answer does not depend on the machine's mime tables.
func contentType(ext string) (string, bool) {
	switch ext {
	case ".html":
		return htmlType, true
	case ".js":
		return "text/javascript; charset=utf-8", true
	case ".css":
		return "text/css; charset=utf-8", true
	case ".svg":
		return "image/svg+xml", true
	}
	return "", false
}

// contentSecurityPolicy allows the page's own files and its own origin only:
// no inline script, no third-party anything.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type asset struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the chat page at / (and /index.html) and its static files by
// name. Other paths get 404, other methods than GET and HEAD get 405.
func Handler() http.Handler {
	assets := make(map[string]asset)
	// The walk cannot fail on an embed.FS whose root exists at build time; a
	// file it cannot read is simply not served.
	_ = fs.WalkDir(files, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		body, err := files.ReadFile(p)
		if err != nil {
			return nil
		}
		ct, ok := contentType(path.Ext(p))
		if !ok {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		assets[strings.TrimPrefix(p, "static")] = asset{
			body:        body,
			contentType: ct,
			etag:        `"` + hex.EncodeToString(sum[:8]) + `"`,
		}
		return nil
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := r.URL.Path
		if name == "/" || name == "" {
			name = "/index.html"
		}
		a, ok := assets[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", a.contentType)
		h.Set("ETag", a.etag)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		// The page may carry ?admin_token=; never leak the address onwards.
		h.Set("Referrer-Policy", "no-referrer")
		if a.contentType == htmlType {
			h.Set("Content-Security-Policy", contentSecurityPolicy)
			h.Set("X-Frame-Options", "DENY")
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
	})
}
