package runner

// admin_auth.go is who may call the admin API (the bearer token, the status
// page's signed cookie) and its one wire format (httpapi): reads guarded by
// api, actions by write.

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"

	"buko.app/agentrunner/httpapi"
)

func (a *Admin) tokenOK(got string) bool {
	return a.cfg.Token != "" && got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(a.cfg.Token)) == 1
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// authed: no token configured (reads open), or the bearer header holds it,
// or the page's cookie is one this token signed and has not expired.
func (a *Admin) authed(r *http.Request) bool {
	if a.cfg.Token == "" {
		return true
	}
	if a.tokenOK(bearer(r)) {
		return true
	}
	c, err := r.Cookie(adminCookie)
	return err == nil && a.cookieOK(c.Value, time.Now())
}

// cookieLifetime is how long a page sign-in lasts (cookie Max-Age and the
// expiry signed into its value).
const cookieLifetime = 12 * time.Hour

// cookieValue is what the page's cookie holds: "v2.<expiry unix seconds>.<HMAC
// of the expiry under the admin token>", so the token itself never travels
// back in a response and a copied cookie stops working at its expiry
// whatever the browser does.
func (a *Admin) cookieValue(expires time.Time) string {
	exp := strconv.FormatInt(expires.Unix(), 10)
	return "v2." + exp + "." + a.cookieMAC(exp)
}

func (a *Admin) cookieMAC(exp string) string {
	m := hmac.New(sha256.New, []byte(a.cfg.Token))
	m.Write([]byte("agentrunner admin page cookie v2\x00" + exp))
	return hex.EncodeToString(m.Sum(nil))
}

// cookieOK checks a cookie value's signature and expiry.
func (a *Admin) cookieOK(v string, now time.Time) bool {
	parts := strings.Split(v, ".")
	if len(parts) != 3 || parts[0] != "v2" {
		return false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || subtle.ConstantTimeCompare([]byte(parts[2]), []byte(a.cookieMAC(parts[1]))) != 1 {
		return false
	}
	return now.Before(time.Unix(exp, 0)) && time.Unix(exp, 0).Before(now.Add(cookieLifetime+time.Minute))
}

// apiError is a refused admin request: the project's one typed API error
// (httpapi.Error), answered as {"error": Message} with its Status.
type apiError = httpapi.Error

func errf(status int, format string, args ...any) error {
	return httpapi.Errorf(status, "", format, args...)
}

// wire is the admin API's format: indented JSON, errors as {"error": "..."},
// an unexpected error logged and answered 500 without its text.
func (a *Admin) wire() *httpapi.API {
	return &httpapi.API{
		ContentType: "application/json; charset=utf-8",
		Indent:      "  ",
		ErrorBody:   func(e *apiError) any { return map[string]string{"error": e.Message} },
		Internal: func(r *http.Request, err error) *apiError {
			a.log.Warn().Err(err).Str("path", r.URL.Path).Msg("admin request failed")
			return &apiError{Status: http.StatusInternalServerError, Message: "internal error (see the replica's log)"}
		},
	}
}

func (a *Admin) api(f httpapi.Handler) http.HandlerFunc {
	return a.json.Func(func(w http.ResponseWriter, r *http.Request) (any, error) {
		if !a.authed(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="agentrunner"`)
			return nil, errf(http.StatusUnauthorized, "authentication required: send Authorization: Bearer <admin token>")
		}
		return f(w, r)
	})
}

// write guards an action: refused unless a token is configured and sent as
// a bearer header (never a cookie: no cross-site writes).
func (a *Admin) write(f httpapi.Handler) http.HandlerFunc {
	return a.json.Func(func(w http.ResponseWriter, r *http.Request) (any, error) {
		if a.cfg.Token == "" {
			return nil, errf(http.StatusForbidden, "admin writes are disabled: no admin token is configured on this replica")
		}
		if !a.tokenOK(bearer(r)) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="agentrunner"`)
			return nil, errf(http.StatusUnauthorized, "authentication required: send Authorization: Bearer <admin token>")
		}
		return f(w, r)
	})
}

// accepted is a 202 answer.
func accepted(body any) httpapi.WithStatus {
	return httpapi.WithStatus{Status: http.StatusAccepted, Body: body}
}
