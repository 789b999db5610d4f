package vault

// Transit auth: Provision builds the Vault client and logs in (token, AppRole
// or Kubernetes), and keepAlive renews the runner's own Vault token, logging
// in again when it can no longer be renewed.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"github.com/hashicorp/vault/api/auth/kubernetes"
)

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
