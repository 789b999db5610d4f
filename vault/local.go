package vault

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// localPrefix begins every ciphertext the keyring makes: "local:v<N>:<base64>".
const localPrefix = "local"

// keyringFormat is the version of the keyring file's layout.
const keyringFormat = 1

// DefaultKeyringPath is $XDG_DATA_HOME/agentrunner/keyring, with XDG_DATA_HOME
// defaulting to ~/.local/share.
func DefaultKeyringPath() (string, error) {
	base := os.Getenv("XDG_DATA_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("%w: no keyring path: set AGENTRUNNER_KEYRING or XDG_DATA_HOME (%v)", ErrConfig, err)
		}
		base = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(base, "agentrunner", "keyring"), nil
}

// Local is the keyring cipher for dev and single-machine installs: AES-256-GCM
// with the bot id as associated data, keys versioned in a JSON file of mode
// 0600 that is created on first use. RotateKey appends a version; older
// versions keep decrypting until rewrap has moved every row.
type Local struct {
	path    string
	metrics *Metrics

	mu      sync.RWMutex
	id      string
	current int
	aeads   map[int]cipher.AEAD
}

// NewLocal returns a keyring cipher on the file at path (made on Provision if absent).
func NewLocal(path string, m *Metrics) *Local { return &Local{path: path, metrics: m} }

type keyringFile struct {
	Format  int          `json:"format"`
	ID      string       `json:"id"`
	Current int          `json:"current"`
	Keys    []keyringKey `json:"keys"`
}

type keyringKey struct {
	Version   int       `json:"version"`
	Key       []byte    `json:"key"` // 32 bytes, base64 in the file
	CreatedAt time.Time `json:"created_at"`
}

// Path is the keyring file.
func (l *Local) Path() string { return l.path }

// Kind implements Cipher.
func (l *Local) Kind() string { return KindLocal }

// KeyRef implements Cipher: "local:<keyring id>".
func (l *Local) KeyRef() string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return localPrefix + ":" + l.id
}

// Provision loads the keyring, creating it (one key, version 1) if absent.
// An existing keyring is read without the lock file (writes replace the file
// by rename, so a read never sees half of one): a keyring on a read-only
// mount, such as a Kubernetes Secret volume, works.
func (l *Local) Provision(ctx context.Context) error {
	if l.path == "" {
		return fmt.Errorf("%w: local keyring path is empty", ErrConfig)
	}
	if kf, err := readKeyring(l.path); err == nil {
		return l.install(kf)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return l.withLock(func() error {
		kf, err := readKeyring(l.path)
		if errors.Is(err, fs.ErrNotExist) {
			kf, err = newKeyring()
			if err == nil {
				err = writeKeyring(l.path, kf)
			}
		}
		if err != nil {
			return err
		}
		return l.install(kf)
	})
}

// Validate implements Cipher.
func (l *Local) Validate() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.aeads == nil || l.aeads[l.current] == nil {
		return fmt.Errorf("%w: keyring %s is not provisioned", ErrConfig, l.path)
	}
	return nil
}

// Cleanup drops the keys from memory.
func (l *Local) Cleanup() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.aeads = nil
	return nil
}

// LatestVersion re-reads the file, so a rotation by another process counts.
func (l *Local) LatestVersion(ctx context.Context) (int, error) {
	if err := l.reload(); err != nil {
		return 0, err
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.current, nil
}

// RotateKey appends a fresh key version to the file and makes it current.
func (l *Local) RotateKey(ctx context.Context) (int, error) {
	var v int
	err := l.withLock(func() error {
		kf, err := readKeyring(l.path)
		if err != nil {
			return err
		}
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return fmt.Errorf("keyring: random key: %w", err)
		}
		next := 0
		for _, k := range kf.Keys {
			next = max(next, k.Version)
		}
		next++
		kf.Keys = append(kf.Keys, keyringKey{Version: next, Key: key, CreatedAt: time.Now().UTC()})
		kf.Current = next
		if err := writeKeyring(l.path, kf); err != nil {
			return err
		}
		v = next
		return l.install(kf)
	})
	return v, err
}

// Encrypt implements Cipher.
func (l *Local) Encrypt(ctx context.Context, items []Plaintext) ([]Sealed, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.aeads == nil {
		return nil, fmt.Errorf("%w: keyring not provisioned", ErrConfig)
	}
	out := make([]Sealed, len(items))
	var failed []ItemError
	for i, it := range items {
		ct, err := l.seal(l.current, it.BotID, it.Token)
		if err != nil {
			failed = append(failed, ItemError{Index: i, BotID: it.BotID, Err: err})
			continue
		}
		out[i] = Sealed{BotID: it.BotID, Ciphertext: ct}
	}
	l.metrics.cipherItems(KindLocal, "encrypt", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

// rlockFor reloads the keyring file when items name a key version this process
// has not seen (another process rotated), then read-locks the keyring. On nil
// the caller must RUnlock.
func (l *Local) rlockFor(items []Sealed) error {
	if l.needsReload(items) {
		if err := l.reload(); err != nil {
			return err
		}
	}
	l.mu.RLock()
	if l.aeads == nil {
		l.mu.RUnlock()
		return fmt.Errorf("%w: keyring not provisioned", ErrConfig)
	}
	return nil
}

// Decrypt implements Cipher.
func (l *Local) Decrypt(ctx context.Context, items []Sealed) ([]Token, error) {
	if err := l.rlockFor(items); err != nil {
		return nil, err
	}
	defer l.mu.RUnlock()
	out := make([]Token, len(items))
	var failed []ItemError
	for i, it := range items {
		tok, err := l.open(it)
		if err != nil {
			failed = append(failed, ItemError{Index: i, BotID: it.BotID, Err: err})
			continue
		}
		out[i] = tok
	}
	l.metrics.cipherItems(KindLocal, "decrypt", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

// Rewrap implements Cipher: open with the old version, seal with the current one.
func (l *Local) Rewrap(ctx context.Context, items []Sealed) ([]Sealed, error) {
	if err := l.rlockFor(items); err != nil {
		return nil, err
	}
	defer l.mu.RUnlock()
	out := make([]Sealed, len(items))
	var failed []ItemError
	for i, it := range items {
		tok, err := l.open(it)
		if err == nil {
			var ct string
			ct, err = l.seal(l.current, it.BotID, tok)
			out[i] = Sealed{BotID: it.BotID, Ciphertext: ct}
		}
		if err != nil {
			out[i] = Sealed{}
			failed = append(failed, ItemError{Index: i, BotID: it.BotID, Err: err})
		}
	}
	l.metrics.cipherItems(KindLocal, "rewrap", len(items), len(failed))
	return out, batchErr(len(items), failed)
}

func (l *Local) seal(version int, botID string, tok Token) (string, error) {
	if botID == "" {
		return "", fmt.Errorf("%w: empty bot id", ErrConfig)
	}
	if tok.IsZero() {
		return "", fmt.Errorf("%w: empty", ErrBadToken)
	}
	aead := l.aeads[version]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(tok.Reveal())+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("keyring: nonce: %w", err)
	}
	sealed := aead.Seal(nonce, nonce, []byte(tok.Reveal()), []byte(botID))
	return fmt.Sprintf("%s:v%d:%s", localPrefix, version, base64.StdEncoding.EncodeToString(sealed)), nil
}

func (l *Local) open(it Sealed) (Token, error) {
	prefix, v, payload, err := splitCiphertext(it.Ciphertext)
	if err != nil {
		return Token{}, err
	}
	if prefix != localPrefix {
		return Token{}, fmt.Errorf("%w: a %q ciphertext given to the local keyring", ErrKeyMismatch, prefix)
	}
	aead := l.aeads[v]
	if aead == nil {
		return Token{}, fmt.Errorf("%w: key version v%d is not in keyring %s", ErrCiphertext, v, l.path)
	}
	raw, err := base64.StdEncoding.DecodeString(payload)
	if err != nil || len(raw) < aead.NonceSize()+aead.Overhead() {
		return Token{}, fmt.Errorf("%w: malformed payload", ErrCiphertext)
	}
	ns := aead.NonceSize()
	plain, err := aead.Open(nil, raw[:ns], raw[ns:], []byte(it.BotID))
	if err != nil {
		return Token{}, fmt.Errorf("%w (authentication failed)", ErrCiphertext)
	}
	tok, err := ParseToken(string(plain))
	if err != nil {
		return Token{}, fmt.Errorf("%w: decrypted value: %w", ErrCiphertext, err)
	}
	return tok, nil
}

// needsReload reports whether some item names a key version not in memory
// (another process rotated the key after this one loaded the file).
func (l *Local) needsReload(items []Sealed) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, it := range items {
		if p, v, _, err := splitCiphertext(it.Ciphertext); err == nil && p == localPrefix && l.aeads != nil && l.aeads[v] == nil {
			return true
		}
	}
	return false
}

func (l *Local) reload() error {
	kf, err := readKeyring(l.path)
	if err != nil {
		return err
	}
	return l.install(kf)
}

func (l *Local) install(kf *keyringFile) error {
	aeads := make(map[int]cipher.AEAD, len(kf.Keys))
	for _, k := range kf.Keys {
		block, err := aes.NewCipher(k.Key)
		if err != nil {
			return fmt.Errorf("keyring %s: key v%d: %w", l.path, k.Version, err)
		}
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			return fmt.Errorf("keyring %s: key v%d: %w", l.path, k.Version, err)
		}
		aeads[k.Version] = gcm
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.id, l.current, l.aeads = kf.ID, kf.Current, aeads
	return nil
}

// withLock runs fn holding an exclusive flock on <path>.lock, so two
// processes never create or rotate the keyring at once.
func (l *Local) withLock(fn func() error) error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	f, err := os.OpenFile(l.path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("keyring: lock: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("keyring: lock: %w", err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN) //nolint:errcheck // closing releases it too
	return fn()
}

func newKeyring() (*keyringFile, error) {
	key := make([]byte, 32)
	id := make([]byte, 8)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("keyring: random key: %w", err)
	}
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("keyring: random id: %w", err)
	}
	return &keyringFile{
		Format:  keyringFormat,
		ID:      "kr_" + hex.EncodeToString(id),
		Current: 1,
		Keys:    []keyringKey{{Version: 1, Key: key, CreatedAt: time.Now().UTC()}},
	}, nil
}

func readKeyring(path string) (*keyringFile, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: keyring %s has mode %04o: it must be readable by its owner only (chmod 600 %s)",
			ErrConfig, path, st.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	var kf keyringFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf("%w: keyring %s is not a keyring file: %v", ErrConfig, path, err)
	}
	if kf.Format != keyringFormat {
		return nil, fmt.Errorf("%w: keyring %s has format %d, this build reads %d", ErrConfig, path, kf.Format, keyringFormat)
	}
	seen := map[int]bool{}
	for _, k := range kf.Keys {
		if k.Version < 1 || seen[k.Version] || len(k.Key) != 32 {
			return nil, fmt.Errorf("%w: keyring %s: bad key entry v%d", ErrConfig, path, k.Version)
		}
		seen[k.Version] = true
	}
	if kf.ID == "" || !seen[kf.Current] {
		return nil, fmt.Errorf("%w: keyring %s: no id or no current key", ErrConfig, path)
	}
	return &kf, nil
}

// writeKeyring replaces the file atomically with mode 0600.
func writeKeyring(path string, kf *keyringFile) error {
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".keyring-*")
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: %w", err)
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keyring: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	return nil
}
