package vault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"buko.app/agentrunner/internal/testsupport"
)

// ciphers returns both ciphers, each fresh (the transit one on its own key).
func ciphers(t *testing.T) map[string]func(t *testing.T) Cipher {
	return map[string]func(t *testing.T) Cipher{
		KindLocal: func(t *testing.T) Cipher { return newTestLocal(t) },
		KindTransit: func(t *testing.T) Cipher {
			tr, _ := newTestTransit(t)
			return tr
		},
	}
}

func makeItems(n int, tag string) []Plaintext {
	items := make([]Plaintext, n)
	for i := range items {
		tok, err := ParseToken(fmt.Sprintf("bot_%s_secret_%06d_%s", tag, i, testsupport.RandHex(8)))
		if err != nil {
			panic(err)
		}
		items[i] = Plaintext{BotID: fmt.Sprintf("bot_%s_%06d", tag, i), Token: tok}
	}
	return items
}

func TestRoundTrip(t *testing.T) {
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			c := mk(t)
			ctx := testCtx(t)
			for _, n := range []int{0, 1, 7, 1500} {
				items := makeItems(n, fmt.Sprintf("rt%d", n))
				sealed, err := c.Encrypt(ctx, items)
				if err != nil {
					t.Fatalf("encrypt %d: %v", n, err)
				}
				if len(sealed) != n {
					t.Fatalf("encrypt %d: got %d", n, len(sealed))
				}
				want := map[string]string{KindLocal: "local:v1:", KindTransit: "vault:v1:"}[name]
				for i, s := range sealed {
					if s.BotID != items[i].BotID || !strings.HasPrefix(s.Ciphertext, want) {
						t.Fatalf("item %d: %q for %s", i, s.Ciphertext[:min(12, len(s.Ciphertext))], s.BotID)
					}
					if strings.Contains(s.Ciphertext, items[i].Token.Reveal()) {
						t.Fatal("ciphertext contains the plaintext")
					}
				}
				toks, err := c.Decrypt(ctx, sealed)
				if err != nil {
					t.Fatalf("decrypt %d: %v", n, err)
				}
				for i := range items {
					if !toks[i].Equal(items[i].Token) {
						t.Fatalf("item %d does not round-trip", i)
					}
				}
			}
		})
	}
}

// TestBotBinding: a ciphertext copied onto another bot does not decrypt, and
// the rest of its batch still does.
func TestBotBinding(t *testing.T) {
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			c := mk(t)
			ctx := testCtx(t)
			items := makeItems(4, "bind")
			sealed, err := c.Encrypt(ctx, items)
			if err != nil {
				t.Fatal(err)
			}
			moved := append([]Sealed(nil), sealed...)
			moved[1].BotID = sealed[2].BotID // bot 2 now holds bot 1's row
			moved[3].Ciphertext = sealed[3].Ciphertext[:len(sealed[3].Ciphertext)-4] + "AAA="
			toks, err := c.Decrypt(ctx, moved)
			var be *BatchError
			if !errors.As(err, &be) {
				t.Fatalf("want a *BatchError, got %v", err)
			}
			if len(be.Failed) != 2 || be.Index(1) == nil || be.Index(3) == nil {
				t.Fatalf("failed items: %+v", be.Failed)
			}
			if !errors.Is(err, ErrCiphertext) || !errors.Is(be.Index(1), ErrCiphertext) {
				t.Fatalf("want ErrCiphertext, got %v", be.Index(1))
			}
			if !toks[0].Equal(items[0].Token) || !toks[2].Equal(items[2].Token) || !toks[1].IsZero() {
				t.Fatal("the good items did not decrypt, or a bad one did")
			}
			// A batch where every item is wrong.
			_, err = c.Decrypt(ctx, []Sealed{{BotID: "bot_other", Ciphertext: sealed[0].Ciphertext}})
			if !errors.Is(err, ErrCiphertext) {
				t.Fatalf("single moved row: %v", err)
			}
			// Rewrap is bound too.
			if _, err := c.Rewrap(ctx, moved[1:2]); !errors.Is(err, ErrCiphertext) {
				t.Fatalf("rewrap of a moved row: %v", err)
			}
			// Garbage and another cipher's ciphertext.
			other := map[string]string{KindLocal: "vault:v1:abcd", KindTransit: "local:v1:abcd"}[name]
			_, err = c.Decrypt(ctx, []Sealed{{BotID: "b", Ciphertext: "garbage"}, {BotID: "b", Ciphertext: other}})
			if !errors.As(err, &be) || !errors.Is(be.Index(0), ErrCiphertext) || !errors.Is(be.Index(1), ErrKeyMismatch) {
				t.Fatalf("garbage: %v", err)
			}
		})
	}
}

func TestKeyRotationAndRewrap(t *testing.T) {
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			c := mk(t)
			ctx := testCtx(t)
			items := makeItems(5, "rot")
			old, err := c.Encrypt(ctx, items)
			if err != nil {
				t.Fatal(err)
			}
			v, err := c.RotateKey(ctx)
			if err != nil || v != 2 {
				t.Fatalf("rotate: v%d, %v", v, err)
			}
			if lv, err := c.LatestVersion(ctx); err != nil || lv != 2 {
				t.Fatalf("latest: v%d, %v", lv, err)
			}
			fresh, err := c.Encrypt(ctx, items[:1])
			if err != nil || fresh[0].Version() != 2 {
				t.Fatalf("encrypt after rotate: %v %v", fresh, err)
			}
			re, err := c.Rewrap(ctx, old)
			if err != nil {
				t.Fatal(err)
			}
			for i := range re {
				if re[i].Version() != 2 || re[i].BotID != items[i].BotID {
					t.Fatalf("rewrapped item %d at v%d", i, re[i].Version())
				}
			}
			toks, err := c.Decrypt(ctx, append(old, re...))
			if err != nil {
				t.Fatalf("old and new versions both decrypt: %v", err)
			}
			for i := range toks {
				if !toks[i].Equal(items[i%len(items)].Token) {
					t.Fatalf("item %d changed", i)
				}
			}
		})
	}
}

// TestTransitBatchCalls: decrypting 10,000 tokens takes at most 20 calls.
func TestTransitBatchCalls(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	tr, ct := newTestTransit(t)
	ctx := testCtx(t)
	items := makeItems(10000, "many")
	before := ct.calls.Load()
	sealed, err := tr.Encrypt(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	enc := ct.calls.Load() - before
	before = ct.calls.Load()
	toks, err := tr.Decrypt(ctx, sealed)
	if err != nil {
		t.Fatal(err)
	}
	dec := ct.calls.Load() - before
	t.Logf("10,000 tokens: encrypt %d calls, decrypt %d calls (batch size %d)", enc, dec, tr.Config().BatchSize)
	if dec > 20 || enc > 20 {
		t.Fatalf("took %d decrypt / %d encrypt calls, want ≤ 20", dec, enc)
	}
	for i := range items {
		if !toks[i].Equal(items[i].Token) {
			t.Fatalf("item %d", i)
		}
	}
	// Smaller chunks: the call count follows the batch size.
	tr2, ct2 := newTestTransit(t, func(c *TransitConfig) { c.BatchSize = 300; c.Concurrency = 1 })
	s2, err := tr2.Encrypt(ctx, items[:1000])
	if err != nil {
		t.Fatal(err)
	}
	before = ct2.calls.Load()
	if _, err := tr2.Decrypt(ctx, s2); err != nil {
		t.Fatal(err)
	}
	if got := ct2.calls.Load() - before; got != 4 {
		t.Fatalf("1000 items at batch size 300: %d calls, want 4", got)
	}
}

func TestTransitUnavailable(t *testing.T) {
	ctx := testCtx(t)
	t.Run("unreachable at provision", func(t *testing.T) {
		tf := filepath.Join(t.TempDir(), "tok")
		_ = os.WriteFile(tf, []byte("root-x"), 0o600)
		addr := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)) // nothing listens there
		_, err := Open(ctx, Config{Cipher: KindTransit, Transit: TransitConfig{Address: addr, TokenFile: tf, MaxRetries: -1}})
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("want ErrUnavailable, got %v", err)
		}
	})
	t.Run("stopped and sealed", func(t *testing.T) {
		addr, token, stop := startVault(t)
		tr, _ := transitOn(t, addr, token, "k-"+testsupport.RandHex(4), func(c *TransitConfig) { c.MaxRetries = -1 })
		sealed, err := tr.Encrypt(ctx, makeItems(3, "seal"))
		if err != nil {
			t.Fatal(err)
		}
		if err := rootClient(t, addr, token).Sys().SealWithContext(ctx); err != nil {
			t.Fatalf("seal: %v", err)
		}
		_, err = tr.Decrypt(ctx, sealed)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "sealed") {
			t.Fatalf("sealed vault: want ErrUnavailable mentioning sealed, got %v", err)
		}
		if _, err := tr.Encrypt(ctx, makeItems(1, "seal2")); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("encrypt on sealed vault: %v", err)
		}
		stop()
		_, err = tr.Decrypt(ctx, sealed)
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("stopped vault: want ErrUnavailable, got %v", err)
		}
	})
}

func TestTransitConfigErrors(t *testing.T) {
	ctx := testCtx(t)
	for name, cfg := range map[string]TransitConfig{
		"bad key":        {Address: "http://127.0.0.1:1", Key: "a/b"},
		"bad batch":      {Address: "http://127.0.0.1:1", BatchSize: -1},
		"approle no id":  {Address: "http://127.0.0.1:1", Auth: AuthAppRole},
		"k8s no role":    {Address: "http://127.0.0.1:1", Auth: AuthKubernetes},
		"unknown method": {Address: "http://127.0.0.1:1", Auth: "ldap"},
	} {
		_, err := Open(ctx, Config{Cipher: KindTransit, Transit: cfg})
		if !errors.Is(err, ErrConfig) {
			t.Errorf("%s: want ErrConfig, got %v", name, err)
		}
	}
	if _, err := NewCipher(Config{Cipher: "rot13"}); !errors.Is(err, ErrConfig) {
		t.Errorf("unknown cipher: %v", err)
	}
	if k := (Config{Transit: TransitConfig{Address: "http://x"}}).ResolvedKind(); k != KindTransit {
		t.Errorf("default with VAULT_ADDR: %s", k)
	}
	if k := (Config{}).ResolvedKind(); k != KindLocal {
		t.Errorf("default without VAULT_ADDR: %s", k)
	}
}

func TestTransitNotDerivedRefused(t *testing.T) {
	addr, token := vaultEnv(t)
	ctx := testCtx(t)
	key := "plain-" + testsupport.RandHex(4)
	ensureTransitMount(t, rootClient(t, addr, token))
	if _, err := rootClient(t, addr, token).Logical().WriteWithContext(ctx, "transit/keys/"+key, nil); err != nil {
		t.Fatal(err)
	}
	tf := filepath.Join(t.TempDir(), "tok")
	_ = os.WriteFile(tf, []byte(token), 0o600)
	_, err := Open(ctx, Config{Transit: TransitConfig{Address: addr, TokenFile: tf, Key: key}})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "not derived") {
		t.Fatalf("want a refusal of a non-derived key, got %v", err)
	}
}

func TestLocalKeyringFile(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "keyring")
	a := NewLocal(path, nil)
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring mode: %v %v", st.Mode(), err)
	}
	if !strings.HasPrefix(a.KeyRef(), "local:kr_") {
		t.Fatalf("key ref %q", a.KeyRef())
	}
	items := makeItems(3, "kr")
	s1, err := a.Encrypt(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	// A second process on the same file: same key ref, decrypts, and sees
	// the first's rotation without being told.
	b := NewLocal(path, nil)
	if err := b.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if b.KeyRef() != a.KeyRef() {
		t.Fatal("two opens of one keyring differ")
	}
	if v, err := a.RotateKey(ctx); err != nil || v != 2 {
		t.Fatalf("rotate: %d %v", v, err)
	}
	s2, err := a.Encrypt(ctx, items)
	if err != nil || s2[0].Version() != 2 {
		t.Fatalf("encrypt v2: %v", err)
	}
	toks, err := b.Decrypt(ctx, append(s1, s2...))
	if err != nil {
		t.Fatalf("other process decrypting v1+v2: %v", err)
	}
	if !toks[4].Equal(items[1].Token) {
		t.Fatal("mismatch")
	}
	// Another keyring cannot open these rows.
	c := newTestLocal(t)
	if c.KeyRef() == a.KeyRef() {
		t.Fatal("two keyrings share an id")
	}
	if _, err := c.Decrypt(ctx, s1); !errors.Is(err, ErrCiphertext) {
		t.Fatalf("foreign keyring: %v", err)
	}
	// Loose permissions and garbage are refused with a clear message.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := NewLocal(path, nil).Provision(ctx); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("mode 0644: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	_ = os.WriteFile(bad, []byte("not json"), 0o600)
	if err := NewLocal(bad, nil).Provision(ctx); !errors.Is(err, ErrConfig) {
		t.Fatalf("garbage keyring: %v", err)
	}
	if err := NewLocal("", nil).Provision(ctx); !errors.Is(err, ErrConfig) {
		t.Fatalf("empty path: %v", err)
	}
}

func TestDefaultKeyringPath(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "/x/data")
	p, err := DefaultKeyringPath()
	if err != nil || p != "/x/data/agentrunner/keyring" {
		t.Fatalf("%q %v", p, err)
	}
}

func TestEncryptRejectsEmpty(t *testing.T) {
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			c := mk(t)
			tok := mustToken(t, "bot_abc")
			_, err := c.Encrypt(context.Background(), []Plaintext{{BotID: "", Token: tok}, {BotID: "b", Token: Token{}}, {BotID: "c", Token: tok}})
			var be *BatchError
			if !errors.As(err, &be) || len(be.Failed) != 2 {
				t.Fatalf("want 2 failed items, got %v", err)
			}
		})
	}
}

// An existing keyring is loaded without creating the lock file beside it, so
// a keyring on a read-only mount (a Kubernetes Secret volume) works.
func TestLocalProvisionReadsExistingKeyringWithoutLock(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring")
	if err := NewLocal(path, nil).Provision(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path + ".lock"); err != nil {
		t.Fatalf("creating the keyring made no lock file: %v", err)
	}
	l := NewLocal(path, nil)
	if err := l.Provision(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("loading an existing keyring touched %s.lock (%v): it fails on a read-only mount", path, err)
	}
}
