package agents

// The HTTP client agents call out with: bounded at every step (dial, TLS,
// response header, whole call), never following a redirect to another host,
// and, when asked, refusing to connect to private, loopback and link-local
// addresses. The address check runs at dial time on the resolved IP (a
// net.Dialer Control func), so a name that resolves to a public address when
// the config is written and to 127.0.0.1 later (DNS rebinding) is still refused.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// Client bounds (ClientOptions defaults).
const (
	DefaultDialTimeout         = 5 * time.Second
	DefaultTLSHandshakeTimeout = 10 * time.Second
	// MaxCallTimeout bounds one agent call: the response header must come
	// within it and the whole call (body included) must end within it. An
	// agent's own "timeout" setting may only be shorter.
	MaxCallTimeout = 5 * time.Minute
	// MaxRedirects bounds same-host redirects followed in one call.
	MaxRedirects = 3
)

// ErrRedirectRefused: the agent service answered with a redirect to another
// scheme or host (or too many redirects); it is not followed.
var ErrRedirectRefused = errors.New("redirect to another host refused")

// ErrAddressDenied: the agent service's address is private, loopback,
// link-local or otherwise not public, and the client denies those.
var ErrAddressDenied = errors.New("address denied: not a public address")

// ClientOptions configures NewHTTPClient. Zero durations take the defaults.
type ClientOptions struct {
	// DenyPrivate refuses connections to loopback, private (RFC 1918, fc00::/7),
	// link-local (169.254/16, fe80::/10, cloud metadata), CGNAT, unspecified
	// and multicast addresses. With it on, proxy variables (HTTPS_PROXY…) are
	// ignored: the check must see the agent service's own address.
	DenyPrivate           bool
	DialTimeout           time.Duration // default DefaultDialTimeout
	TLSHandshakeTimeout   time.Duration // default DefaultTLSHandshakeTimeout
	ResponseHeaderTimeout time.Duration // default MaxCallTimeout
	Timeout               time.Duration // whole call; default MaxCallTimeout
}

// NewHTTPClient returns the client for agents' outbound calls.
func NewHTTPClient(o ClientOptions) *http.Client {
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.TLSHandshakeTimeout <= 0 {
		o.TLSHandshakeTimeout = DefaultTLSHandshakeTimeout
	}
	if o.ResponseHeaderTimeout <= 0 {
		o.ResponseHeaderTimeout = MaxCallTimeout
	}
	if o.Timeout <= 0 {
		o.Timeout = MaxCallTimeout
	}
	d := &net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second}
	proxy := http.ProxyFromEnvironment
	if o.DenyPrivate {
		d.Control = denyPrivateControl
		proxy = nil
	}
	tr := &http.Transport{
		Proxy:                 proxy,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   o.TLSHandshakeTimeout,
		ResponseHeaderTimeout: o.ResponseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: tr, Timeout: o.Timeout, CheckRedirect: checkRedirect}
}

// checkRedirect follows a redirect only to the same scheme and host (port
// included) as the first request, at most MaxRedirects times. A redirect
// elsewhere would carry the signed body or the API key to a host the config
// did not name.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) == 0 {
		return nil
	}
	first := via[0].URL
	if req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		return ErrRedirectRefused
	}
	if len(via) > MaxRedirects {
		return fmt.Errorf("%w: more than %d redirects", ErrRedirectRefused, MaxRedirects)
	}
	return nil
}

// denyPrivateControl runs after name resolution, on the address about to be
// dialled.
func denyPrivateControl(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse %q", ErrAddressDenied, address)
	}
	if !PublicAddr(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrAddressDenied, ap.Addr())
	}
	return nil
}

// cgnat is the shared address space of RFC 6598.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// PublicAddr reports whether a is a public unicast address (what DenyPrivate allows).
func PublicAddr(a netip.Addr) bool {
	a = a.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsLoopback(), a.IsPrivate(),
		a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.IsMulticast():
		return false
	case a.Is4() && (cgnat.Contains(a) || a.As4()[0] == 0 || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		return false
	}
	return true
}

// withRedirectPolicy returns a shallow copy of c that follows redirects only
// to the same host, whatever policy c had: a client handed in by a caller
// cannot re-open cross-host redirects.
func withRedirectPolicy(c *http.Client) *http.Client {
	if c == nil {
		return NewHTTPClient(ClientOptions{})
	}
	cp := *c
	cp.CheckRedirect = checkRedirect
	return &cp
}
