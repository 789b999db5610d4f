package vault

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
)

// TestAppRoleDecryptOnlyAndRelogin logs in with an AppRole whose policy may
// only decrypt, checks that it cannot encrypt or rotate, and that once its
// short-lived token reaches its max TTL the cipher logs in again by itself.
func TestAppRoleDecryptOnlyAndRelogin(t *testing.T) {
	addr, token := vaultEnv(t)
	ctx := testCtx(t)
	root := rootClient(t, addr, token)
	owner, _ := newTestTransit(t) // creates the key and encrypts as root
	key := owner.Config().Key
	items := makeItems(3, "approle")
	sealed, err := owner.Encrypt(ctx, items)
	if err != nil {
		t.Fatal(err)
	}

	mount := "approle-" + testsupport.RandHex(4)
	if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, mount, &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatalf("enable approle: %v", err)
	}
	t.Cleanup(func() { _ = root.Sys().DisableAuth(mount) })
	policy := "decrypt-" + testsupport.RandHex(4)
	if err := root.Sys().PutPolicyWithContext(ctx, policy, fmt.Sprintf(`path "transit/decrypt/%s" { capabilities = ["update"] }`, key)); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "auth/"+mount+"/role/runner", map[string]any{
		"token_policies": policy, "token_ttl": "2s", "token_max_ttl": "3s",
	}); err != nil {
		t.Fatal(err)
	}
	rid, err := root.Logical().ReadWithContext(ctx, "auth/"+mount+"/role/runner/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := root.Logical().WriteWithContext(ctx, "auth/"+mount+"/role/runner/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	sidFile := filepath.Join(t.TempDir(), "secret-id")
	if err := os.WriteFile(sidFile, []byte(sid.Data["secret_id"].(string)), 0o600); err != nil {
		t.Fatal(err)
	}

	m := NewMetrics(nil)
	t.Setenv("VAULT_TOKEN", "") // the AppRole token must be the only credential
	c, err := Open(ctx, Config{Cipher: KindTransit, Metrics: m, Logger: zerolog.Nop(), Transit: TransitConfig{
		Address: addr, Key: key, Auth: AuthAppRole, AppRoleMount: mount,
		AppRoleRoleID: rid.Data["role_id"].(string), AppRoleSecretIDFile: sidFile, MaxRetries: -1,
	}})
	if err != nil {
		t.Fatalf("open with approle: %v", err)
	}
	defer c.Cleanup()

	toks, err := c.Decrypt(ctx, sealed)
	if err != nil || !toks[0].Equal(items[0].Token) {
		t.Fatalf("decrypt with approle: %v", err)
	}
	if _, err := c.Encrypt(ctx, items[:1]); !errors.Is(err, ErrPermission) {
		t.Fatalf("encrypt with a decrypt-only policy: want ErrPermission, got %v", err)
	}
	if _, err := c.RotateKey(ctx); !errors.Is(err, ErrPermission) {
		t.Fatalf("rotate with a decrypt-only policy: want ErrPermission, got %v", err)
	}

	// Wait (bounded) until the watcher has logged in again after max TTL.
	logins := func() float64 { return testutil.ToFloat64(m.logins.WithLabelValues(AuthAppRole, "ok")) }
	testsupport.Until(t, "≥ 3 logins (the watcher should log in again as tokens expire)", 90*time.Second, func() (bool, string) {
		n := logins()
		return n >= 3, fmt.Sprintf("logins: %v", n)
	})
	toks, err = c.Decrypt(ctx, sealed)
	if err != nil || !toks[2].Equal(items[2].Token) {
		t.Fatalf("decrypt after re-login: %v", err)
	}
	t.Logf("logins %v, renewals %v", logins(), testutil.ToFloat64(m.renewals.WithLabelValues("ok")))
}

// TestKubernetesAuthWiring checks the Kubernetes auth path (service account
// token file, role, mount, login, then real Transit calls with the token it
// got). The dev Vault built here has no Kubernetes auth plugin, so a front
// server answers only the login (checking role and JWT, and minting a real
// token on the real server); every other request goes to the real Vault.
func TestKubernetesAuthWiring(t *testing.T) {
	addr, token := vaultEnv(t)
	ctx := testCtx(t)
	root := rootClient(t, addr, token)
	owner, _ := newTestTransit(t)
	key := owner.Config().Key
	items := makeItems(2, "k8s")
	sealed, err := owner.Encrypt(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	policy := "k8s-decrypt-" + testsupport.RandHex(4)
	if err := root.Sys().PutPolicyWithContext(ctx, policy, fmt.Sprintf(`path "transit/decrypt/%s" { capabilities = ["update"] }`, key)); err != nil {
		t.Fatal(err)
	}
	jwt := "eyJhbGciOiJSUzI1NiJ9." + testsupport.RandHex(20) + ".sig"
	jwtFile := filepath.Join(t.TempDir(), "sa-token")
	if err := os.WriteFile(jwtFile, []byte(jwt), 0o600); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(addr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var logins atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/auth/k8s-test/login" {
			proxy.ServeHTTP(w, r)
			return
		}
		var req struct{ Role, JWT string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Role != "runner" || req.JWT != jwt {
			http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
			return
		}
		sec, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{policy}, TTL: "1h", NoParent: true})
		if err != nil {
			http.Error(w, `{"errors":["mint failed"]}`, http.StatusInternalServerError)
			return
		}
		logins.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{
			"client_token": sec.Auth.ClientToken, "lease_duration": 3600, "renewable": true, "policies": []string{policy},
		}})
	}))
	t.Cleanup(front.Close)

	t.Setenv("VAULT_TOKEN", "")
	c, err := Open(ctx, Config{Cipher: KindTransit, Logger: zerolog.Nop(), Transit: TransitConfig{
		Address: front.URL, Key: key, Auth: AuthKubernetes, KubernetesRole: "runner",
		KubernetesTokenFile: jwtFile, KubernetesMount: "k8s-test", MaxRetries: -1,
	}})
	if err != nil {
		t.Fatalf("open with kubernetes auth: %v", err)
	}
	defer c.Cleanup()
	toks, err := c.Decrypt(ctx, sealed)
	if err != nil || !toks[1].Equal(items[1].Token) {
		t.Fatalf("decrypt: %v", err)
	}
	if logins.Load() != 1 {
		t.Fatalf("logins: %d", logins.Load())
	}
	// A wrong role is refused at Provision with ErrPermission.
	_, err = Open(ctx, Config{Cipher: KindTransit, Transit: TransitConfig{
		Address: front.URL, Key: key, Auth: AuthKubernetes, KubernetesRole: "intruder",
		KubernetesTokenFile: jwtFile, KubernetesMount: "k8s-test", MaxRetries: -1,
	}})
	if !errors.Is(err, ErrPermission) {
		t.Fatalf("wrong role: %v", err)
	}
}

// TestTokenAuthRenewal: a renewable token (periodic, 2 s) stays valid because
// the lifetime watcher renews it; without renewal it would expire.
func TestTokenAuthRenewal(t *testing.T) {
	addr, token := vaultEnv(t)
	ctx := testCtx(t)
	root := rootClient(t, addr, token)
	owner, _ := newTestTransit(t)
	key := owner.Config().Key
	items := makeItems(1, "renew")
	sealed, err := owner.Encrypt(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	policy := "renew-" + testsupport.RandHex(4)
	if err := root.Sys().PutPolicyWithContext(ctx, policy, fmt.Sprintf(`path "transit/decrypt/%s" { capabilities = ["update"] }`, key)); err != nil {
		t.Fatal(err)
	}
	sec, err := root.Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{policy}, Period: "2s", NoParent: true})
	if err != nil {
		t.Fatal(err)
	}
	tf := filepath.Join(t.TempDir(), "tok")
	_ = os.WriteFile(tf, []byte(sec.Auth.ClientToken), 0o600)
	m := NewMetrics(nil)
	c, err := Open(ctx, Config{Cipher: KindTransit, Metrics: m, Transit: TransitConfig{Address: addr, Key: key, TokenFile: tf, MaxRetries: -1}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Cleanup()
	renewals := func() float64 { return testutil.ToFloat64(m.renewals.WithLabelValues("ok")) }
	testsupport.Until(t, "≥ 3 renewals", 90*time.Second, func() (bool, string) {
		n := renewals()
		return n >= 3, fmt.Sprintf("renewals: %v", n)
	})
	if _, err := c.Decrypt(ctx, sealed); err != nil {
		t.Fatalf("decrypt with the renewed token: %v", err)
	}
}
