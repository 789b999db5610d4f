package vault

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"github.com/hashicorp/vault/api/auth/kubernetes"
	"github.com/rs/zerolog"
)

// Transit auth methods (TransitConfig.Auth).
const (
	AuthToken      = "token"
	AuthAppRole    = "approle"
	AuthKubernetes = "kubernetes"
)

// Defaults of TransitConfig.
const (
	DefaultTransitMount   = "transit"
	DefaultTransitKey     = "agentrunner-tokens"
	DefaultBatchSize      = 1000
	DefaultK8sTokenFile   = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultAppRoleMount   = "approle"
	DefaultK8sMount       = "kubernetes"
	transitPrefix         = "vault"
	maxBatchSize          = 100000
	defaultConcurrency    = 2
	maxReloginBackoff     = 30 * time.Second
	initialReloginBackoff = 500 * time.Millisecond
)

// TransitConfig configures the Vault Transit cipher. Vault's own environment
// variables (VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, VAULT_NAMESPACE, …) apply
// as in the vault CLI; fields set here win.
type TransitConfig struct {
	Address string // VAULT_ADDR
	Mount   string // transit mount path, default "transit"
	Key     string // derived key name, default "agentrunner-tokens"
	// BatchSize is the number of items per Transit call (batch_input);
	// default 1000, so 10,000 tokens take 10 calls.
	BatchSize int
	// Concurrency is how many batch calls run at once; default 2.
	Concurrency int

	// Auth is AuthToken (default), AuthAppRole or AuthKubernetes.
	Auth string
	// TokenFile holds the Vault token for AuthToken; "" uses $VAULT_TOKEN.
	TokenFile string
	// AppRole: role id, the file holding the secret id (re-read at each
	// login), and the auth mount.
	AppRoleRoleID       string
	AppRoleSecretIDFile string
	AppRoleMount        string
	// Kubernetes: role, service account token file, auth mount.
	KubernetesRole      string
	KubernetesTokenFile string
	KubernetesMount     string

	// MaxRetries: 0 keeps the Vault client's default (2, or
	// $VAULT_MAX_RETRIES); negative disables retries.
	MaxRetries int
	// Timeout per call; 0 keeps the client's default (60 s).
	Timeout time.Duration
	// WrapTransport, if set, wraps the client's HTTP transport (tests count calls with it).
	WrapTransport func(http.RoundTripper) http.RoundTripper
}

func (c TransitConfig) withDefaults() TransitConfig {
	if c.Mount == "" {
		c.Mount = DefaultTransitMount
	}
	if c.Key == "" {
		c.Key = DefaultTransitKey
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = defaultConcurrency
	}
	if c.Auth == "" {
		c.Auth = AuthToken
	}
	if c.AppRoleMount == "" {
		c.AppRoleMount = DefaultAppRoleMount
	}
	if c.KubernetesMount == "" {
		c.KubernetesMount = DefaultK8sMount
	}
	if c.KubernetesTokenFile == "" {
		c.KubernetesTokenFile = DefaultK8sTokenFile
	}
	c.Mount = strings.Trim(c.Mount, "/")
	return c
}

func (c TransitConfig) check() error {
	switch {
	case c.Mount == "":
		return fmt.Errorf("%w: transit mount is empty", ErrConfig)
	case c.Key == "" || strings.Contains(c.Key, "/"):
		return fmt.Errorf("%w: transit key name %q is empty or contains '/'", ErrConfig, c.Key)
	case c.BatchSize < 1 || c.BatchSize > maxBatchSize:
		return fmt.Errorf("%w: transit batch size %d: want 1..%d", ErrConfig, c.BatchSize, maxBatchSize)
	case c.Concurrency < 1 || c.Concurrency > 64:
		return fmt.Errorf("%w: transit concurrency %d: want 1..64", ErrConfig, c.Concurrency)
	}
	switch c.Auth {
	case AuthToken:
	case AuthAppRole:
		if c.AppRoleRoleID == "" || c.AppRoleSecretIDFile == "" {
			return fmt.Errorf("%w: AppRole auth needs a role id and a secret id file", ErrConfig)
		}
	case AuthKubernetes:
		if c.KubernetesRole == "" {
			return fmt.Errorf("%w: Kubernetes auth needs a role", ErrConfig)
		}
	default:
		return fmt.Errorf("%w: Vault auth %q: want %s, %s or %s", ErrConfig, c.Auth, AuthToken, AuthAppRole, AuthKubernetes)
	}
	return nil
}

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

// Provision builds the Vault client, authenticates, checks the key (when the
// token may read it) and starts token renewal.
func (t *Transit) Provision(ctx context.Context) error {
	if err := t.cfg.check(); err != nil {
		return err
	}
	vc := api.DefaultConfig()
	if vc.Error != nil {
		return fmt.Errorf("%w: vault client: %v", ErrConfig, vc.Error)
	}
	if t.cfg.Address != "" {
		vc.Address = t.cfg.Address
	}
	if t.cfg.MaxRetries > 0 {
		vc.MaxRetries = t.cfg.MaxRetries
	} else if t.cfg.MaxRetries < 0 {
		vc.MaxRetries = 0
	}
	if t.cfg.Timeout > 0 {
		vc.Timeout = t.cfg.Timeout
	}
	if t.cfg.WrapTransport != nil {
		vc.HttpClient.Transport = t.cfg.WrapTransport(vc.HttpClient.Transport)
	}
	client, err := api.NewClient(vc)
	if err != nil {
		return fmt.Errorf("%w: vault client: %v", ErrConfig, err)
	}
	t.client = client

	var first *api.Secret
	switch t.cfg.Auth {
	case AuthToken:
		if t.cfg.TokenFile != "" {
			b, err := os.ReadFile(t.cfg.TokenFile)
			if err != nil {
				return fmt.Errorf("%w: vault token file: %v", ErrConfig, err)
			}
			client.SetToken(strings.TrimSpace(string(b)))
		}
		if client.Token() == "" {
			return fmt.Errorf("%w: no Vault token: set VAULT_TOKEN, a token file, or AppRole/Kubernetes auth", ErrConfig)
		}
		sec, err := client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			err = t.classify("token lookup-self", err)
			if !errors.Is(err, ErrPermission) {
				return err
			}
			// A token without the default policy may not look itself up:
			// use it as it is, without renewal.
			t.log.Warn().Err(err).Msg("cannot look up the Vault token; it will not be renewed")
			sec = nil
		}
		if ok, _ := sec.TokenIsRenewable(); sec != nil && ok {
			if ttl, _ := sec.TokenTTL(); ttl > 0 {
				first = &api.Secret{Auth: &api.SecretAuth{
					ClientToken: client.Token(), Renewable: true, LeaseDuration: int(ttl.Seconds()),
				}}
			}
		}
	case AuthAppRole:
		am, err := approle.NewAppRoleAuth(t.cfg.AppRoleRoleID,
			&approle.SecretID{FromFile: t.cfg.AppRoleSecretIDFile}, approle.WithMountPath(t.cfg.AppRoleMount))
		if err != nil {
			return fmt.Errorf("%w: approle: %v", ErrConfig, err)
		}
		t.login = func(ctx context.Context) (*api.Secret, error) { return client.Auth().Login(ctx, am) }
	case AuthKubernetes:
		km, err := kubernetes.NewKubernetesAuth(t.cfg.KubernetesRole,
			kubernetes.WithServiceAccountTokenPath(t.cfg.KubernetesTokenFile), kubernetes.WithMountPath(t.cfg.KubernetesMount))
		if err != nil {
			return fmt.Errorf("%w: kubernetes auth: %v", ErrConfig, err)
		}
		t.login = func(ctx context.Context) (*api.Secret, error) { return client.Auth().Login(ctx, km) }
	}
	if t.login != nil {
		sec, err := t.relogin(ctx)
		if err != nil {
			return err
		}
		first = sec
	}
	if err := t.checkKey(ctx); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	if first != nil {
		t.wg.Add(1)
		go t.keepAlive(wctx, first)
	}
	return nil
}

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

// relogin logs in with the configured method; the client keeps the new token.
func (t *Transit) relogin(ctx context.Context) (*api.Secret, error) {
	t.loginM.Lock()
	defer t.loginM.Unlock()
	sec, err := t.login(ctx)
	if err != nil {
		t.metrics.login(t.cfg.Auth, "error")
		return nil, t.classify(t.cfg.Auth+" login", err)
	}
	if sec == nil || sec.Auth == nil {
		t.metrics.login(t.cfg.Auth, "error")
		return nil, fmt.Errorf("%w: %s login returned no token", ErrPermission, t.cfg.Auth)
	}
	t.metrics.login(t.cfg.Auth, "ok")
	t.log.Debug().Str("method", t.cfg.Auth).Int("ttl_s", sec.Auth.LeaseDuration).Msg("logged in to Vault")
	return sec, nil
}

// keepAlive renews the client token until it cannot be renewed any more,
// then logs in again (when the auth method allows), until ctx ends.
func (t *Transit) keepAlive(ctx context.Context, sec *api.Secret) {
	defer t.wg.Done()
	for {
		w, err := t.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: sec})
		if err != nil {
			t.log.Error().Err(err).Msg("cannot watch the Vault token's lifetime; it will not be renewed")
			return
		}
		t.wg.Add(1)
		go func() { defer t.wg.Done(); w.Start() }()
	watch:
		for {
			select {
			case <-ctx.Done():
				w.Stop()
				return
			case <-w.RenewCh():
				t.metrics.renewal("ok")
			case err := <-w.DoneCh():
				w.Stop()
				if err != nil {
					t.metrics.renewal("error")
					t.log.Warn().Err(err).Msg("Vault token renewal failed")
				}
				break watch
			}
		}
		if t.login == nil {
			t.log.Warn().Msg("the Vault token can no longer be renewed and token auth cannot log in again; requests will fail once it expires")
			return
		}
		backoff := initialReloginBackoff
		for {
			s, err := t.relogin(ctx)
			if err == nil {
				sec = s
				break
			}
			t.log.Warn().Err(err).Dur("retry_in", backoff).Msg("Vault login failed")
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxReloginBackoff)
		}
	}
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

type transitResult struct {
	Ciphertext string `json:"ciphertext"`
	Plaintext  string `json:"plaintext"`
	Error      string `json:"error"`
}

func botContext(botID string) string { return base64.StdEncoding.EncodeToString([]byte(botID)) }

// Encrypt implements Cipher.
func (t *Transit) Encrypt(ctx context.Context, items []Plaintext) ([]Sealed, error) {
	out := make([]Sealed, len(items))
	inputs := make([]map[string]any, len(items))
	pre := make([]error, len(items))
	for i, it := range items {
		switch {
		case it.BotID == "":
			pre[i] = fmt.Errorf("%w: empty bot id", ErrConfig)
		case it.Token.IsZero():
			pre[i] = fmt.Errorf("%w: empty", ErrBadToken)
		default:
			inputs[i] = map[string]any{
				"plaintext": base64.StdEncoding.EncodeToString([]byte(it.Token.Reveal())),
				"context":   botContext(it.BotID),
			}
		}
	}
	failed, err := t.batch(ctx, "encrypt", "encrypt", ids(items, func(p Plaintext) string { return p.BotID }), inputs, pre,
		func(i int, r transitResult) error {
			if !strings.HasPrefix(r.Ciphertext, transitPrefix+":v") {
				return fmt.Errorf("vault transit: encrypt returned no ciphertext")
			}
			out[i] = Sealed{BotID: items[i].BotID, Ciphertext: r.Ciphertext}
			return nil
		})
	if err != nil {
		return nil, err
	}
	t.metrics.cipherItems(KindTransit, "encrypt", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

// Decrypt implements Cipher.
func (t *Transit) Decrypt(ctx context.Context, items []Sealed) ([]Token, error) {
	out := make([]Token, len(items))
	inputs, pre := t.sealedInputs(items)
	failed, err := t.batch(ctx, "decrypt", "decrypt", ids(items, func(s Sealed) string { return s.BotID }), inputs, pre,
		func(i int, r transitResult) error {
			raw, err := base64.StdEncoding.DecodeString(r.Plaintext)
			if err != nil {
				return fmt.Errorf("%w: vault returned malformed plaintext", ErrCiphertext)
			}
			tok, err := ParseToken(string(raw))
			if err != nil {
				return fmt.Errorf("%w: decrypted value: %w", ErrCiphertext, err)
			}
			out[i] = tok
			return nil
		})
	if err != nil {
		return nil, err
	}
	t.metrics.cipherItems(KindTransit, "decrypt", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

// Rewrap implements Cipher.
func (t *Transit) Rewrap(ctx context.Context, items []Sealed) ([]Sealed, error) {
	out := make([]Sealed, len(items))
	inputs, pre := t.sealedInputs(items)
	failed, err := t.batch(ctx, "rewrap", "rewrap", ids(items, func(s Sealed) string { return s.BotID }), inputs, pre,
		func(i int, r transitResult) error {
			if !strings.HasPrefix(r.Ciphertext, transitPrefix+":v") {
				return fmt.Errorf("vault transit: rewrap returned no ciphertext")
			}
			out[i] = Sealed{BotID: items[i].BotID, Ciphertext: r.Ciphertext}
			return nil
		})
	if err != nil {
		return nil, err
	}
	t.metrics.cipherItems(KindTransit, "rewrap", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

func (t *Transit) sealedInputs(items []Sealed) ([]map[string]any, []error) {
	inputs := make([]map[string]any, len(items))
	pre := make([]error, len(items))
	for i, it := range items {
		prefix, _, _, err := splitCiphertext(it.Ciphertext)
		switch {
		case it.BotID == "":
			pre[i] = fmt.Errorf("%w: empty bot id", ErrConfig)
		case err != nil:
			pre[i] = err
		case prefix != transitPrefix:
			pre[i] = fmt.Errorf("%w: a %q ciphertext given to Vault Transit", ErrKeyMismatch, prefix)
		default:
			inputs[i] = map[string]any{"ciphertext": it.Ciphertext, "context": botContext(it.BotID)}
		}
	}
	return inputs, pre
}

func ids[T any](items []T, f func(T) string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = f(it)
	}
	return out
}

// batch sends inputs (nil entries are skipped: pre holds their error) to
// <mount>/<op>/<key> in chunks of BatchSize, Concurrency chunks at a time,
// and hands each item's result to done. It returns the failed items, or an
// error for a failure of a whole call (nothing is then trusted).
func (t *Transit) batch(ctx context.Context, op, metricOp string, botIDs []string, inputs []map[string]any, pre []error,
	done func(i int, r transitResult) error) ([]ItemError, error) {
	if t.client == nil {
		return nil, fmt.Errorf("%w: transit cipher is not provisioned", ErrConfig)
	}
	var (
		mu     sync.Mutex
		failed []ItemError
	)
	fail := func(i int, err error) {
		mu.Lock()
		failed = append(failed, ItemError{Index: i, BotID: botIDs[i], Err: err})
		mu.Unlock()
	}
	var idx []int // indexes of items to send
	for i := range inputs {
		if pre[i] != nil {
			fail(i, pre[i])
			continue
		}
		idx = append(idx, i)
	}
	var chunks [][]int
	for len(idx) > 0 {
		n := min(t.cfg.BatchSize, len(idx))
		chunks = append(chunks, idx[:n])
		idx = idx[n:]
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, t.cfg.Concurrency)
	var (
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	for _, chunk := range chunks {
		select {
		case sem <- struct{}{}:
		case <-cctx.Done():
		}
		if cctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(chunk []int) {
			defer wg.Done()
			defer func() { <-sem }()
			batch := make([]map[string]any, len(chunk))
			for j, i := range chunk {
				batch[j] = inputs[i]
			}
			results, allFailed, err := t.call(cctx, op, metricOp, batch)
			if err != nil {
				errOnce.Do(func() { firstErr = err; cancel() })
				return
			}
			for j, i := range chunk {
				if allFailed {
					fail(i, fmt.Errorf("%w: vault rejected every item of the batch", ErrCiphertext))
					continue
				}
				if j >= len(results) {
					fail(i, fmt.Errorf("vault transit: %s returned %d results for %d items", op, len(results), len(chunk)))
					continue
				}
				r := results[j]
				if r.Error != "" {
					fail(i, fmt.Errorf("%w: vault: %s", ErrCiphertext, r.Error))
					continue
				}
				if err := done(i, r); err != nil {
					fail(i, err)
				}
			}
		}(chunk)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return failed, nil
}

// call makes one batch call. When Vault rejects every item (HTTP 400
// without request-level errors) it reports allFailed.
func (t *Transit) call(ctx context.Context, op, metricOp string, batch []map[string]any) (results []transitResult, allFailed bool, err error) {
	body := map[string]any{"batch_input": batch, "partial_failure_response_code": http.StatusOK}
	path := t.cfg.Mount + "/" + op + "/" + t.cfg.Key
	for attempt := 0; ; attempt++ {
		start := time.Now()
		sec, werr := t.client.Logical().WriteWithContext(ctx, path, body)
		if werr != nil {
			err = werr
			var re *api.ResponseError
			if errors.As(err, &re) && re.StatusCode == http.StatusBadRequest && len(re.Errors) == 0 {
				t.metrics.transitCall(metricOp, "ok", time.Since(start))
				return nil, true, nil
			}
			err = t.classify(op, err)
			t.metrics.transitCall(metricOp, resultOf(err), time.Since(start))
			if errors.Is(err, ErrPermission) && attempt == 0 && t.login != nil {
				// The token may have expired under us: log in again once.
				if _, lerr := t.relogin(ctx); lerr == nil {
					continue
				}
			}
			return nil, false, err
		}
		t.metrics.transitCall(metricOp, "ok", time.Since(start))
		if sec == nil || sec.Data == nil {
			return nil, false, fmt.Errorf("vault transit %s: empty response", op)
		}
		raw, err := json.Marshal(sec.Data["batch_results"])
		if err != nil {
			return nil, false, fmt.Errorf("vault transit %s: %w", op, err)
		}
		if err := json.Unmarshal(raw, &results); err != nil {
			return nil, false, fmt.Errorf("vault transit %s: batch_results: %w", op, err)
		}
		return results, false, nil
	}
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
