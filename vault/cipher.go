package vault

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/rs/zerolog"
)

// Cipher kinds, the values of Config.Cipher and $AGENTRUNNER_CIPHER.
const (
	KindTransit = "transit"
	KindLocal   = "local"
)

// Errors callers branch on (errors.Is). Every error this package returns for
// those conditions wraps one of them.
var (
	// ErrUnavailable: the key service cannot answer now (Vault sealed,
	// unreachable, overloaded, or a 5xx). Retry later; nothing is wrong with
	// the data.
	ErrUnavailable = errors.New("key service unavailable (retryable)")
	// ErrPermission: the key service refused the caller (Vault 403).
	ErrPermission = errors.New("key service denied permission")
	// ErrCiphertext: a ciphertext does not open for its bot: it was made for
	// another bot, altered, or sealed by a key version that no longer exists.
	ErrCiphertext = errors.New("ciphertext does not open for this bot")
	// ErrKeyMismatch: a row was sealed by another cipher or key than the one
	// configured (key_ref differs).
	ErrKeyMismatch = errors.New("row sealed by another key")
	// ErrNotFound: no secret_vault row for the bot.
	ErrNotFound = errors.New("no stored token for this bot")
	// ErrConfig: the cipher's configuration is incomplete or contradictory.
	ErrConfig = errors.New("bad vault configuration")
)

// Plaintext is one token to seal, bound to its bot.
type Plaintext struct {
	BotID string
	Token Token
}

// Sealed is one ciphertext, bound to its bot.
type Sealed struct {
	BotID      string
	Ciphertext string
}

// Version returns the key version named in the ciphertext ("vault:v3:…",
// "local:v2:…"), or 0 if it names none.
func (s Sealed) Version() int {
	_, v, _, err := splitCiphertext(s.Ciphertext)
	if err != nil {
		return 0
	}
	return v
}

// Cipher seals and opens bot tokens in batches. Each item is bound to its bot
// id. Results are aligned with the input; when some items fail and others do
// not, the call returns the partial results and a *BatchError naming the
// failed indexes. A failure of the whole call (ErrUnavailable, ErrPermission,
// ctx) returns nil results.
//
// Lifecycle (as Caddy modules): NewCipher → Provision → Validate → use →
// Cleanup. Methods are safe for concurrent use after Provision.
type Cipher interface {
	// Provision connects, authenticates and loads keys. A Vault that cannot
	// be reached yields an error wrapping ErrUnavailable.
	Provision(ctx context.Context) error
	// Validate checks the provisioned configuration.
	Validate() error
	// Cleanup stops background work (token renewal) and releases resources.
	Cleanup() error

	// Kind is KindTransit or KindLocal.
	Kind() string
	// KeyRef names the key this cipher seals with; it is stored in
	// secret_vault.key_ref and checked before decrypting.
	KeyRef() string

	Encrypt(ctx context.Context, items []Plaintext) ([]Sealed, error)
	Decrypt(ctx context.Context, items []Sealed) ([]Token, error)
	// Rewrap re-seals ciphertexts under the newest key version without
	// exposing plaintext to the caller.
	Rewrap(ctx context.Context, items []Sealed) ([]Sealed, error)
	// LatestVersion is the key version Encrypt and Rewrap use.
	LatestVersion(ctx context.Context) (int, error)
	// RotateKey adds a key version and returns it. Old versions still decrypt.
	RotateKey(ctx context.Context) (int, error)
}

// ItemError is the failure of one item of a batch.
type ItemError struct {
	Index int
	BotID string
	Err   error
}

func (e ItemError) Error() string { return fmt.Sprintf("bot %s: %v", e.BotID, e.Err) }
func (e ItemError) Unwrap() error { return e.Err }

// BatchError reports the items of a batch that failed; the others succeeded.
type BatchError struct {
	Total  int
	Failed []ItemError
}

func (e *BatchError) Error() string {
	if len(e.Failed) == 0 {
		return "batch: no failures"
	}
	return fmt.Sprintf("%d of %d items failed; first: %v", len(e.Failed), e.Total, e.Failed[0])
}

// Unwrap exposes the item errors, so errors.Is(err, ErrCiphertext) holds when
// any item failed that way.
func (e *BatchError) Unwrap() []error {
	out := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		out[i] = f
	}
	return out
}

// Index returns the error of item i, or nil if it succeeded.
func (e *BatchError) Index(i int) error {
	for _, f := range e.Failed {
		if f.Index == i {
			return f
		}
	}
	return nil
}

func batchErr(total int, failed []ItemError) error {
	if len(failed) == 0 {
		return nil
	}
	return &BatchError{Total: total, Failed: failed}
}

// Config selects and configures a Cipher. It maps onto flags and environment
// variables in cmd/agentrunner (docs/architecture.md §10).
type Config struct {
	// Cipher is KindTransit, KindLocal, or "" for transit when
	// Transit.Address is set and local otherwise.
	Cipher string
	// Keyring is the local keyring file; "" means DefaultKeyringPath().
	Keyring string
	Transit TransitConfig
	Logger  zerolog.Logger
	Metrics *Metrics
}

// ResolvedKind applies the default rule for Config.Cipher.
func (c Config) ResolvedKind() string {
	if c.Cipher != "" {
		return c.Cipher
	}
	if c.Transit.Address != "" {
		return KindTransit
	}
	return KindLocal
}

// NewCipher builds the configured Cipher without doing any I/O.
func NewCipher(cfg Config) (Cipher, error) {
	switch k := cfg.ResolvedKind(); k {
	case KindTransit:
		return newTransit(cfg.Transit, cfg.Logger, cfg.Metrics), nil
	case KindLocal:
		path := cfg.Keyring
		if path == "" {
			p, err := DefaultKeyringPath()
			if err != nil {
				return nil, err
			}
			path = p
		}
		return NewLocal(path, cfg.Metrics), nil
	default:
		return nil, fmt.Errorf("%w: cipher %q: want %q or %q", ErrConfig, k, KindTransit, KindLocal)
	}
}

// Open builds, provisions and validates the configured Cipher. The caller
// must Cleanup it.
func Open(ctx context.Context, cfg Config) (Cipher, error) {
	c, err := NewCipher(cfg)
	if err != nil {
		return nil, err
	}
	if err := c.Provision(ctx); err != nil {
		_ = c.Cleanup()
		return nil, err
	}
	if err := c.Validate(); err != nil {
		_ = c.Cleanup()
		return nil, err
	}
	return c, nil
}

// splitCiphertext parses "<prefix>:v<N>:<payload>".
func splitCiphertext(ct string) (prefix string, version int, payload string, err error) {
	parts := strings.SplitN(ct, ":", 3)
	if len(parts) != 3 || !strings.HasPrefix(parts[1], "v") || parts[2] == "" {
		return "", 0, "", fmt.Errorf("%w: malformed ciphertext (want <kind>:v<N>:<data>)", ErrCiphertext)
	}
	v, err := strconv.Atoi(parts[1][1:])
	if err != nil || v < 1 {
		return "", 0, "", fmt.Errorf("%w: malformed key version in ciphertext", ErrCiphertext)
	}
	return parts[0], v, parts[2], nil
}
