package workflows

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/permanent"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows/codec"
)

func localCipher(t *testing.T) vault.Cipher {
	t.Helper()
	c, err := vault.Open(context.Background(), vault.Config{Cipher: vault.KindLocal, Keyring: filepath.Join(t.TempDir(), "keyring")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Cleanup() })
	return c
}

func TestSecretsSealedWithTheKeyring(t *testing.T) {
	ctx := context.Background()
	c := localCipher(t)
	ref, err := SealSecret(ctx, c, "bot_a", "sk-very-secret key/with+odd=chars")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ref, "sk-very") {
		t.Fatal("sealed reference holds the secret")
	}
	got, err := VaultSecrets{c}.Secret(ctx, "bot_a", ref)
	if err != nil || got != "sk-very-secret key/with+odd=chars" {
		t.Fatalf("open: %q %v", got, err)
	}
	if _, err := (VaultSecrets{c}).Secret(ctx, "bot_b", ref); err == nil {
		t.Fatal("a secret sealed for one bot opened for another")
	}
	if _, err := SealSecret(ctx, c, "bot_a", ""); err == nil {
		t.Fatal("empty secret sealed")
	}
}

func TestCodecKeyWrappedWithTheKeyring(t *testing.T) {
	ctx := context.Background()
	c := localCipher(t)
	key, _ := codec.GenerateKey()
	w, err := WrapCodecKey(ctx, c, key)
	if err != nil {
		t.Fatal(err)
	}
	kr, err := codec.KeyFile{Current: "k1", Keys: map[string]string{"k1": w}}.Keyring(ctx, KeyUnwrapper{c})
	if err != nil {
		t.Fatal(err)
	}
	if _, k, _ := kr.EncryptionKey(); !bytes.Equal(k, key) {
		t.Fatal("unwrapped key differs")
	}
}

// A bot's token ciphertext (secret_vault.ciphertext) copied into an agent
// config must not open as the agent's secret, and an agent secret must not
// open as the bot's token.
func TestSecretAndTokenCiphertextsAreSeparateDomains(t *testing.T) {
	for name, mk := range map[string]func(*testing.T) vault.Cipher{vault.KindLocal: localCipher, vault.KindTransit: transitCipher} {
		t.Run(name, func(t *testing.T) { testSeparateDomains(t, mk(t)) })
	}
}

// transitCipher is a Transit cipher on the Vault dev server (VAULT_ADDR,
// VAULT_TOKEN), on a derived key of the test's own; it skips without Vault.
func transitCipher(t *testing.T) vault.Cipher {
	t.Helper()
	addr := testsupport.Getenv(t, "Vault", "VAULT_ADDR", testsupport.ServicesHint)
	token := testsupport.Getenv(t, "Vault", "VAULT_TOKEN", testsupport.ServicesHint)
	cfg := api.DefaultConfig()
	cfg.Address = addr
	vc, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(token)
	key := "wf-secrets-" + testsupport.RandHex(5)
	if _, err := vc.Logical().WriteWithContext(context.Background(), "transit/keys/"+key, map[string]any{"derived": true}); err != nil {
		t.Fatalf("create key: %v", err)
	}
	tf := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tf, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := vault.Open(context.Background(), vault.Config{Cipher: vault.KindTransit,
		Transit: vault.TransitConfig{Address: addr, Key: key, TokenFile: tf}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Cleanup() })
	return c
}

func testSeparateDomains(t *testing.T, c vault.Cipher) {
	ctx := context.Background()
	tok, err := vault.ParseToken("bot_AAAAsecretTOKENbody0123456789abc")
	if err != nil {
		t.Fatal(err)
	}
	sealedTok, err := c.Encrypt(ctx, []vault.Plaintext{{BotID: "bot_a", Token: tok}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := VaultSecrets{c}.Secret(ctx, "bot_a", sealedTok[0].Ciphertext)
	if err == nil {
		t.Fatalf("the token ciphertext opened as an agent secret (%d bytes)", len(got))
	}
	if !errors.Is(err, ErrLegacySecret) || !permanent.Is(err) {
		t.Fatalf("token ciphertext as agent secret: want a permanent ErrLegacySecret, got %v", err)
	}
	if strings.Contains(err.Error(), "secretTOKEN") {
		t.Fatal("the error shows the token")
	}

	ref, err := SealSecret(ctx, c, "bot_a", "sk-agent-secret-0123")
	if err != nil {
		t.Fatal(err)
	}
	if toks, err := c.Decrypt(ctx, []vault.Sealed{{BotID: "bot_a", Ciphertext: ref}}); err == nil {
		t.Fatalf("the agent secret opened as the bot's token (%d bytes)", len(toks[0].Reveal()))
	} else if !errors.Is(err, vault.ErrCiphertext) {
		t.Fatalf("agent secret as token: want ErrCiphertext, got %v", err)
	}
	// Nor as a codec key.
	if _, err := (KeyUnwrapper{c}).Unwrap(ctx, ref); err == nil {
		t.Fatal("the agent secret opened as a codec key")
	}
}

// A secret sealed the old way (bound to the bare bot id) is refused with the
// migration hint, and is never used.
func TestLegacyAgentSecretIsRefusedWithAHint(t *testing.T) {
	ctx := context.Background()
	c := localCipher(t)
	legacy, err := sealValue(ctx, c, "bot_a", []byte("old-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = VaultSecrets{c}.Secret(ctx, "bot_a", legacy)
	if !errors.Is(err, ErrLegacySecret) || !strings.Contains(err.Error(), "codec seal-secret") {
		t.Fatalf("legacy secret: %v", err)
	}
	// Garbage is a ciphertext error, not a legacy one.
	if _, err := (VaultSecrets{c}).Secret(ctx, "bot_a", "local:v1:AAAA"); errors.Is(err, ErrLegacySecret) || err == nil {
		t.Fatalf("garbage: %v", err)
	}
}
