package vault

// The configuration of the Vault Transit cipher: TransitConfig, its auth
// methods, defaults and checks.

import (
	"fmt"
	"net/http"
	"strings"
	"time"
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
