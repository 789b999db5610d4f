package workflows

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

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
