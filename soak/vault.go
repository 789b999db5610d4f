package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// vaultServer is a Vault of the soak's own with raft storage, so that a stop
// and a start keep its Transit key: initialised once (one unseal key), then
// unsealed at every start. Dev mode would forget the key on restart.
type vaultServer struct {
	bin         string
	dir         string
	port        int
	clusterPort int
	rootToken   string
	unsealKey   string
	proc        *proc
	hc          *http.Client
}

func (v *vaultServer) addr() string { return fmt.Sprintf("http://127.0.0.1:%d", v.port) }

func (v *vaultServer) prepare(logPath string) error {
	v.hc = &http.Client{Timeout: 10 * time.Second}
	// Raft: the storage the minimal build has besides inmem (no "file").
	cfg := fmt.Sprintf(`storage "raft" {
  path    = %q
  node_id = "soak"
}
listener "tcp" {
  address         = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable     = true
}
disable_mlock = true
api_addr      = "http://127.0.0.1:%d"
cluster_addr  = "https://127.0.0.1:%d"
ui            = false
`, filepath.Join(v.dir, "data"), v.port, v.clusterPort, v.port, v.clusterPort)
	if err := os.MkdirAll(filepath.Join(v.dir, "data"), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(v.dir, "vault.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return err
	}
	v.proc = newProc("vault", logPath, func() *exec.Cmd {
		return exec.Command(v.bin, "server", "-config", path)
	})
	return nil
}

// call sends one Vault API request with the root token (when known).
func (v *vaultServer) call(ctx context.Context, method, path string, in, out any) error {
	var body bytes.Buffer
	if in != nil {
		if err := json.NewEncoder(&body).Encode(in); err != nil {
			return err
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, v.addr()+path, &body)
	if err != nil {
		return err
	}
	if v.rootToken != "" {
		req.Header.Set("X-Vault-Token", v.rootToken)
	}
	resp, err := v.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e struct{ Errors []string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("vault %s %s: HTTP %d %v", method, path, resp.StatusCode, e.Errors)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// start starts the server, initialises it on the first start, unseals it,
// and on the first start enables Transit with the derived key.
func (v *vaultServer) start(ctx context.Context, mount, key string) error {
	if err := v.proc.start(); err != nil {
		return err
	}
	var health struct{ Initialized, Sealed bool }
	if err := until(ctx, 60*time.Second, func() error {
		if !v.proc.running() {
			return fmt.Errorf("vault exited (log %s)", v.proc.logPath)
		}
		// 501 not initialised, 503 sealed: any answer will do.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, v.addr()+"/v1/sys/seal-status", nil)
		resp, err := v.hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&health)
	}); err != nil {
		return fmt.Errorf("vault did not answer: %w", err)
	}
	first := !health.Initialized
	if first {
		var init struct {
			Keys      []string `json:"keys_base64"`
			RootToken string   `json:"root_token"`
		}
		if err := v.call(ctx, http.MethodPut, "/v1/sys/init", map[string]int{"secret_shares": 1, "secret_threshold": 1}, &init); err != nil {
			return err
		}
		if len(init.Keys) != 1 {
			return fmt.Errorf("vault init returned %d keys", len(init.Keys))
		}
		v.unsealKey, v.rootToken = init.Keys[0], init.RootToken
		if err := os.WriteFile(v.tokenFile(), []byte(v.rootToken), 0o600); err != nil {
			return err
		}
	}
	if err := v.call(ctx, http.MethodPut, "/v1/sys/unseal", map[string]string{"key": v.unsealKey}, nil); err != nil {
		return err
	}
	if err := until(ctx, 60*time.Second, func() error {
		return v.call(ctx, http.MethodGet, "/v1/auth/token/lookup-self", nil, nil)
	}); err != nil {
		return fmt.Errorf("vault not usable after unseal: %w", err)
	}
	if first {
		if err := v.call(ctx, http.MethodPost, "/v1/sys/mounts/"+mount, map[string]string{"type": "transit"}, nil); err != nil {
			return err
		}
		if err := v.call(ctx, http.MethodPost, "/v1/"+mount+"/keys/"+key, map[string]any{"derived": true}, nil); err != nil {
			return err
		}
	}
	return until(ctx, 30*time.Second, func() error {
		return v.call(ctx, http.MethodGet, "/v1/"+mount+"/keys/"+key, nil, nil)
	})
}

// tokenFile holds the root token for the replicas (AGENTRUNNER_VAULT_TOKEN_FILE).
func (v *vaultServer) tokenFile() string { return filepath.Join(v.dir, "token") }

// until retries f every 200 ms until it succeeds or limit passes.
func until(ctx context.Context, limit time.Duration, f func() error) error {
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
