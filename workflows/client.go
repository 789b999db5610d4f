package workflows

import (
	"context"
	"crypto/tls"
	"fmt"

	"github.com/rs/zerolog"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/log"

	"buko.app/agentrunner/workflows/codec"
)

// DialOptions are what Dial needs to reach Temporal.
type DialOptions struct {
	Address   string            // host:port, default 127.0.0.1:7233
	Namespace string            // default "default"
	Keys      codec.KeyProvider // payload keys; required: payloads are never stored in the clear
	Logger    zerolog.Logger
	Metrics   *Metrics
	TLS       *tls.Config // nil: plaintext (the dev server); set for a TLS or mTLS frontend
}

// ClientOptions returns the SDK client options with the payload codec (and
// encrypted failure messages), the zerolog adapter and the metrics handler.
func ClientOptions(o DialOptions) (client.Options, error) {
	if o.Keys == nil {
		return client.Options{}, fmt.Errorf("workflows: payload keys are required")
	}
	if o.Address == "" {
		o.Address = "127.0.0.1:7233"
	}
	if o.Namespace == "" {
		o.Namespace = "default"
	}
	dc := codec.DataConverter(o.Keys)
	return client.Options{
		HostPort:          o.Address,
		Namespace:         o.Namespace,
		DataConverter:     dc,
		FailureConverter:  codec.FailureConverter(dc),
		Logger:            NewLogger(o.Logger),
		MetricsHandler:    o.Metrics.TemporalHandler(),
		ConnectionOptions: client.ConnectionOptions{TLS: o.TLS},
	}, nil
}

// Dial connects to Temporal with ClientOptions; it checks the server answers.
func Dial(ctx context.Context, o DialOptions) (client.Client, error) {
	opts, err := ClientOptions(o)
	if err != nil {
		return nil, err
	}
	c, err := client.DialContext(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("workflows: dial Temporal at %s: %w", opts.HostPort, err)
	}
	return c, nil
}

// NewLogger adapts a zerolog.Logger to the SDK's logger.
func NewLogger(l zerolog.Logger) log.Logger { return zlog{l} }

type zlog struct{ l zerolog.Logger }

func (z zlog) Debug(msg string, kv ...interface{}) { z.l.Debug().Fields(kv).Msg(msg) }
func (z zlog) Info(msg string, kv ...interface{})  { z.l.Info().Fields(kv).Msg(msg) }
func (z zlog) Warn(msg string, kv ...interface{})  { z.l.Warn().Fields(kv).Msg(msg) }
func (z zlog) Error(msg string, kv ...interface{}) { z.l.Error().Fields(kv).Msg(msg) }
func (z zlog) With(kv ...interface{}) log.Logger   { return zlog{z.l.With().Fields(kv).Logger()} }
