package sessions

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
)

// Delivery modes.
const (
	DeliveryGateway = "gateway" // the Bot Gateway WebSocket, falling back to polling when it cannot upgrade
	DeliveryPolling = "polling" // getUpdates long polling only
)

// Defaults of the tuning fields of Config.
const (
	DefaultLanes           = 8
	DefaultMaxPending      = 256
	DefaultPingInterval    = 20 * time.Second
	DefaultSilenceTimeout  = 45 * time.Second
	DefaultWriteTimeout    = 10 * time.Second
	DefaultDialTimeout     = 30 * time.Second
	DefaultBackoffBase     = 500 * time.Millisecond
	DefaultBackoffMax      = 30 * time.Second
	DefaultReplacedBackoff = 60 * time.Second
	DefaultStableAfter     = 10 * time.Second
	DefaultMaxAuthFailures = 3
	DefaultFallbackAfter   = 5
	DefaultGatewayRetry    = 2 * time.Minute
	DefaultPollTimeout     = 25 * time.Second
)

// Config describes one bot's session. BotID, Client, Tokens and Handoff are
// required; every other field has a default.
type Config struct {
	BotID    string
	Delivery string       // DeliveryGateway (default) or DeliveryPolling
	Client   *buko.Client // REST base URL and GatewayURL()
	Tokens   TokenSource
	Handoff  Handoff
	// DeadLetters keeps what cannot be handed off (an update that does not
	// decode, one Handoff refuses permanently) before it is acked. nil is
	// allowed and means "never ack such an update": it is retried with
	// backoff forever (logged, counted) and the bot waits at it — safe, never
	// lossy. The runner always sets it (Postgres, runner/deadletter.go).
	DeadLetters DeadLetterSink

	Lanes      int            // parallel lanes by hash(chat_id), default 8
	MaxPending int            // updates held in memory per bot, default 256 (back-pressure: stop reading)
	Logger     zerolog.Logger // already carries bot_id, shard, epoch
	Metrics    *Metrics       // shared by all sessions of a process; nil ok

	// OnAcked runs after each (coalesced) ack was written to the socket or a
	// polling offset was confirmed, with ids strictly increasing. It runs on a
	// session goroutine and must return quickly.
	OnAcked func(id buko.UpdateID)
	// OnAuthFailed runs once when repeated 401s end the session (state
	// StateAuthFailed): the runner marks the bot auth_failed. It runs after the
	// session's delivery loop has returned, so it may call Stop.
	OnAuthFailed func()
	// OnState reports state changes, in order, for the status page and
	// metrics. It runs on a session goroutine with transitions held: it must
	// return quickly and must not call Stop (State and Reconnect are fine).
	OnState func(st State, cause string)

	// HTTPClient performs the Gateway upgrade. nil → NewGatewayHTTPClient()
	// per session; the runner may share one across sessions. Its Timeout is
	// ignored for the socket's lifetime (DialTimeout bounds the upgrade).
	HTTPClient *http.Client

	// Tuning; zero means the default.
	PingInterval    time.Duration // send a ping after this much silence (20 s)
	SilenceTimeout  time.Duration // no frame for this long → the socket is dead (45 s)
	WriteTimeout    time.Duration // bound on one frame write (10 s)
	DialTimeout     time.Duration // bound on one upgrade (30 s)
	BackoffBase     time.Duration // first reconnect/handoff retry ceiling (500 ms)
	BackoffMax      time.Duration // cap of the exponential backoff (30 s)
	ReplacedBackoff time.Duration // wait after close 4009 (60 s, jittered down to half)
	StableAfter     time.Duration // a socket that lived this long resets the backoff (10 s)
	MaxAuthFailures int           // consecutive 401s before OnAuthFailed (3)
	FallbackAfter   int           // consecutive failed upgrades (not 401/409/429) before polling (5)
	GatewayRetry    time.Duration // while polling as a fallback, try the Gateway this often (2 min)
	PollTimeout     time.Duration // getUpdates long-poll wait, whole seconds, ≤ 50 s (25 s)
}

func (c *Config) validate() error {
	var errs []error
	if c.BotID == "" {
		errs = append(errs, errors.New("BotID is empty"))
	}
	if c.Client == nil {
		//lint:ignore ST1005 the message starts with the Config field it names
		errs = append(errs, errors.New("Client is nil"))
	}
	if c.Tokens == nil {
		//lint:ignore ST1005 the message starts with the Config field it names
		errs = append(errs, errors.New("Tokens is nil"))
	}
	if c.Handoff == nil {
		errs = append(errs, errors.New("Handoff is nil"))
	}
	switch c.Delivery {
	case "", DeliveryGateway, DeliveryPolling:
	default:
		//lint:ignore ST1005 the message starts with the Config field it names
		errs = append(errs, fmt.Errorf("Delivery %q: want %q or %q", c.Delivery, DeliveryGateway, DeliveryPolling))
	}
	if c.Lanes < 0 || c.Lanes > 1024 {
		//lint:ignore ST1005 the message starts with the Config field it names
		errs = append(errs, fmt.Errorf("Lanes %d: want 0 (default) to 1024", c.Lanes))
	}
	if c.MaxPending < 0 {
		errs = append(errs, fmt.Errorf("MaxPending %d: want ≥ 0 (0 = default)", c.MaxPending))
	}
	if c.MaxAuthFailures < 0 || c.FallbackAfter < 0 {
		errs = append(errs, errors.New("MaxAuthFailures and FallbackAfter must not be negative"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"PingInterval", c.PingInterval}, {"SilenceTimeout", c.SilenceTimeout},
		{"WriteTimeout", c.WriteTimeout}, {"DialTimeout", c.DialTimeout},
		{"BackoffBase", c.BackoffBase}, {"BackoffMax", c.BackoffMax},
		{"ReplacedBackoff", c.ReplacedBackoff}, {"StableAfter", c.StableAfter},
		{"GatewayRetry", c.GatewayRetry}, {"PollTimeout", c.PollTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s %v is negative", d.name, d.v))
		}
	}
	if c.PollTimeout > time.Duration(buko.MaxPollTimeout)*time.Second {
		errs = append(errs, fmt.Errorf("PollTimeout %v: over %d s", c.PollTimeout, buko.MaxPollTimeout))
	}
	if len(errs) > 0 {
		return fmt.Errorf("sessions: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Delivery == "" {
		c.Delivery = DeliveryGateway
	}
	setInt := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	setDur := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	setInt(&c.Lanes, DefaultLanes)
	setInt(&c.MaxPending, DefaultMaxPending)
	setInt(&c.MaxAuthFailures, DefaultMaxAuthFailures)
	setInt(&c.FallbackAfter, DefaultFallbackAfter)
	setDur(&c.PingInterval, DefaultPingInterval)
	setDur(&c.SilenceTimeout, DefaultSilenceTimeout)
	setDur(&c.WriteTimeout, DefaultWriteTimeout)
	setDur(&c.DialTimeout, DefaultDialTimeout)
	setDur(&c.BackoffBase, DefaultBackoffBase)
	setDur(&c.BackoffMax, DefaultBackoffMax)
	setDur(&c.ReplacedBackoff, DefaultReplacedBackoff)
	setDur(&c.StableAfter, DefaultStableAfter)
	setDur(&c.GatewayRetry, DefaultGatewayRetry)
	setDur(&c.PollTimeout, DefaultPollTimeout)
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.PingInterval >= c.SilenceTimeout {
		c.PingInterval = c.SilenceTimeout / 2
	}
	if c.PollTimeout < time.Second {
		c.PollTimeout = time.Second
	}
}

// NewGatewayHTTPClient returns an HTTP client for Gateway upgrades, sized for
// many idle sockets: small transport buffers (they are dropped once the socket
// is handed to the WebSocket library), no connection reuse, and bounded
// connect, TLS and header waits. One client may serve every session of a process.
func NewGatewayHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 15 * time.Second,
			DisableKeepAlives:     true,
			DisableCompression:    true,
			ReadBufferSize:        1024,
			WriteBufferSize:       1024,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// State is where a session stands.
type State int32

// States.
const (
	stateNone       State = iota // before the first transition
	StateConnecting              // dialing the Gateway
	StateLive                    // a Gateway socket is open
	StatePolling                 // long-polling getUpdates
	StateBackoff                 // waiting before the next attempt (the cause says why)
	StateDraining                // Stop called: finishing in-flight handoffs
	StateAuthFailed              // repeated 401s: delivery stopped, OnAuthFailed called
	StateStopped                 // Stop returned, or the Start context ended
)

// String is the state's metric label and status-page name.
func (st State) String() string {
	switch st {
	case stateNone:
		return "none"
	case StateConnecting:
		return "connecting"
	case StateLive:
		return "live"
	case StatePolling:
		return "polling"
	case StateBackoff:
		return "backoff"
	case StateDraining:
		return "draining"
	case StateAuthFailed:
		return "auth_failed"
	case StateStopped:
		return "stopped"
	}
	return fmt.Sprintf("state(%d)", int32(st))
}

// metricStates are the states counted by the sessions-by-state gauge.
func metricStates() []State {
	return []State{StateConnecting, StateLive, StatePolling, StateBackoff, StateDraining, StateAuthFailed}
}
