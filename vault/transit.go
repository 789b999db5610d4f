package vault

// The Vault Transit cipher: the Transit type, its key (checked, created,
// rotated) and the classification of Vault's errors. Its config is in
// transit_config.go, login and token renewal in transit_auth.go, the batch
// calls in transit_batch.go.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/rs/zerolog"
)

// Transit is the Vault Transit cipher: a derived key (context = base64 of
// the bot id), batch calls, the runner's own Vault token renewed by a
// lifetime watcher (and re-obtained by logging in again for AppRole and
// Kubernetes auth).
type Transit struct {
	cfg     TransitConfig
	log     zerolog.Logger
	metrics *Metrics

	client *api.Client
	login  func(ctx context.Context) (*api.Secret, error) // nil for a plain token
	loginM sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newTransit(cfg TransitConfig, log zerolog.Logger, m *Metrics) *Transit {
	return &Transit{cfg: cfg.withDefaults(), log: log.With().Str("component", "vault-transit").Logger(), metrics: m}
}

// NewTransit returns a Transit cipher; call Provision before use.
func NewTransit(cfg TransitConfig, log zerolog.Logger, m *Metrics) *Transit {
	return newTransit(cfg, log, m)
}

// Kind implements Cipher.
func (t *Transit) Kind() string { return KindTransit }

// KeyRef implements Cipher: "transit:<mount>/<key>".
func (t *Transit) KeyRef() string { return KindTransit + ":" + t.cfg.Mount + "/" + t.cfg.Key }

// Config returns the effective configuration.
func (t *Transit) Config() TransitConfig { return t.cfg }

// Validate implements Cipher.
func (t *Transit) Validate() error {
	if t.client == nil {
		return fmt.Errorf("%w: transit cipher is not provisioned", ErrConfig)
	}
	return t.cfg.check()
}

// Cleanup stops token renewal.
func (t *Transit) Cleanup() error {
	if t.cancel != nil {
		t.cancel()
	}
	t.wg.Wait()
	return nil
}

// checkKey verifies that the key, if this token may read it, is derived (so
// that ciphertexts are bound to bot ids). A missing key is created by the
// first Encrypt; a token that may not read keys skips the check.
func (t *Transit) checkKey(ctx context.Context) error {
	sec, err := t.client.Logical().ReadWithContext(ctx, t.keyPath())
	if err != nil {
		err = t.classify("read key", err)
		if errors.Is(err, ErrPermission) {
			return nil
		}
		return err
	}
	if sec == nil || sec.Data == nil {
		t.log.Warn().Str("key", t.cfg.Mount+"/keys/"+t.cfg.Key).Msg("transit key does not exist yet; the first encrypt creates it (derived)")
		return nil
	}
	if d, _ := sec.Data["derived"].(bool); !d {
		return fmt.Errorf("%w: transit key %s/keys/%s is not derived: ciphertexts would not be bound to bot ids (create it with derived=true)",
			ErrConfig, t.cfg.Mount, t.cfg.Key)
	}
	return nil
}

// EnsureKey creates the derived key if it does not exist.
func (t *Transit) EnsureKey(ctx context.Context) error {
	sec, err := t.client.Logical().ReadWithContext(ctx, t.keyPath())
	if err != nil {
		return t.classify("read key", err)
	}
	if sec != nil && sec.Data != nil {
		return nil
	}
	_, err = t.client.Logical().WriteWithContext(ctx, t.keyPath(), map[string]any{"derived": true})
	if err != nil {
		return t.classify("create key", err)
	}
	return nil
}

func (t *Transit) keyPath() string { return t.cfg.Mount + "/keys/" + t.cfg.Key }

// LatestVersion implements Cipher (needs read on <mount>/keys/<key>).
func (t *Transit) LatestVersion(ctx context.Context) (int, error) {
	start := time.Now()
	sec, err := t.client.Logical().ReadWithContext(ctx, t.keyPath())
	if err != nil {
		err = t.classify("read key", err)
		t.metrics.transitCall("read_key", resultOf(err), time.Since(start))
		return 0, err
	}
	t.metrics.transitCall("read_key", "ok", time.Since(start))
	if sec == nil || sec.Data == nil {
		return 0, fmt.Errorf("%w: transit key %s does not exist", ErrConfig, t.keyPath())
	}
	n, ok := sec.Data["latest_version"].(json.Number)
	if !ok {
		return 0, fmt.Errorf("vault transit: key %s: no latest_version", t.keyPath())
	}
	v, err := n.Int64()
	if err != nil {
		return 0, fmt.Errorf("vault transit: key %s: latest_version: %w", t.keyPath(), err)
	}
	return int(v), nil
}

// RotateKey implements Cipher (needs update on <mount>/keys/<key>/rotate).
func (t *Transit) RotateKey(ctx context.Context) (int, error) {
	start := time.Now()
	_, err := t.client.Logical().WriteWithContext(ctx, t.keyPath()+"/rotate", nil)
	if err != nil {
		err = t.classify("rotate", err)
		t.metrics.transitCall("rotate", resultOf(err), time.Since(start))
		return 0, err
	}
	t.metrics.transitCall("rotate", "ok", time.Since(start))
	return t.LatestVersion(ctx)
}

// classify wraps err with ErrUnavailable (sealed, unreachable, 5xx, 429) or
// ErrPermission (403) so callers can branch.
func (t *Transit) classify(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("vault %s: %w", op, err)
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		msg := strings.Join(re.Errors, "; ")
		switch {
		case re.StatusCode == http.StatusForbidden:
			return fmt.Errorf("%w: vault %s: %s", ErrPermission, op, msg)
		case re.StatusCode == http.StatusTooManyRequests || re.StatusCode >= 500:
			return fmt.Errorf("%w: vault %s: HTTP %d: %s", ErrUnavailable, op, re.StatusCode, msg)
		case re.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: vault %s: not found (is transit mounted at %q?): %s", ErrConfig, op, t.cfg.Mount, msg)
		default:
			return fmt.Errorf("vault %s: HTTP %d: %s", op, re.StatusCode, msg)
		}
	}
	// Anything else is the transport: connection refused, DNS, TLS, timeout.
	return fmt.Errorf("%w: vault %s: %v", ErrUnavailable, op, err)
}

func resultOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, ErrPermission):
		return "denied"
	default:
		return "error"
	}
}
