package buko

import (
	"context"
	"time"
)

type receivedAtKey struct{}

// WithReceivedAt returns ctx carrying t, the time the update being handed on
// was received from Buko. A session sets it on each handoff so the processing
// side can measure reply latency from receipt, retries and queueing included.
func WithReceivedAt(ctx context.Context, t time.Time) context.Context {
	return context.WithValue(ctx, receivedAtKey{}, t)
}

// ReceivedAt returns the receipt time WithReceivedAt put in ctx, if any.
func ReceivedAt(ctx context.Context) (time.Time, bool) {
	t, ok := ctx.Value(receivedAtKey{}).(time.Time)
	return t, ok && !t.IsZero()
}
