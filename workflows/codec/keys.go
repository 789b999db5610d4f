package codec

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Keyring is a fixed set of payload keys with one current key. It is a
// KeyProvider. Keys are held in memory only.
type Keyring struct {
	current string
	keys    map[string][]byte
}

var keyIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// NewKeyring builds a keyring; current must be one of keys and every key 32 bytes.
func NewKeyring(current string, keys map[string][]byte) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("codec: keyring has no keys")
	}
	k := &Keyring{current: current, keys: make(map[string][]byte, len(keys))}
	for id, key := range keys {
		if !keyIDPattern.MatchString(id) {
			return nil, fmt.Errorf("codec: key id %q: want 1–64 of [A-Za-z0-9._-]", id)
		}
		if len(key) != KeySize {
			return nil, fmt.Errorf("codec: key %q is %d bytes, want %d", id, len(key), KeySize)
		}
		k.keys[id] = append([]byte(nil), key...)
	}
	if _, ok := k.keys[current]; !ok {
		return nil, fmt.Errorf("codec: current key %q is not in the keyring", current)
	}
	return k, nil
}

// EncryptionKey returns the current key.
func (k *Keyring) EncryptionKey() (string, []byte, error) { return k.current, k.keys[k.current], nil }

// DecryptionKey returns the key with the given id.
func (k *Keyring) DecryptionKey(id string) ([]byte, error) {
	key, ok := k.keys[id]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownKey, id)
	}
	return key, nil
}

// GenerateKey returns 32 random bytes.
func GenerateKey() ([]byte, error) {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("codec: generate key: %w", err)
	}
	return k, nil
}

// Unwrapper opens a wrapped key: the vault package's cipher (local keyring or
// Vault Transit) implements it through a small adapter in cmd.
type Unwrapper interface {
	Unwrap(ctx context.Context, wrapped string) ([]byte, error)
}

// KeyFile is the on-disk form of a payload keyring:
//
//	{"current": "k2", "keys": {"k1": "base64:…", "k2": "local:v1:…"}}
//
// A value "base64:<32 bytes in std base64>" is a raw key (development, tests);
// any other value is a wrapped key handed to the Unwrapper (the keyring's or
// Vault's ciphertext of the key), so the file itself holds no usable secret.
type KeyFile struct {
	Current string            `json:"current"`
	Keys    map[string]string `json:"keys"`
}

// RawPrefix marks an unwrapped key in a KeyFile.
const RawPrefix = "base64:"

// ParseKeyFile decodes a KeyFile strictly.
func ParseKeyFile(data []byte) (KeyFile, error) {
	var kf KeyFile
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return KeyFile{}, fmt.Errorf("codec: key file: %w", err)
	}
	if kf.Current == "" || len(kf.Keys) == 0 {
		return KeyFile{}, errors.New(`codec: key file: "current" and "keys" are required`)
	}
	return kf, nil
}

// Keyring opens every key of the file (wrapped ones through u, which may be
// nil when all keys are raw) and builds the keyring.
func (kf KeyFile) Keyring(ctx context.Context, u Unwrapper) (*Keyring, error) {
	keys := make(map[string][]byte, len(kf.Keys))
	for id, v := range kf.Keys {
		if raw, ok := strings.CutPrefix(v, RawPrefix); ok {
			b, err := base64.StdEncoding.DecodeString(raw)
			if err != nil {
				return nil, fmt.Errorf("codec: key %q: bad base64", id)
			}
			keys[id] = b
			continue
		}
		if u == nil {
			return nil, fmt.Errorf("codec: key %q is wrapped but no keyring/Vault cipher is configured", id)
		}
		b, err := u.Unwrap(ctx, v)
		if err != nil {
			return nil, fmt.Errorf("codec: unwrap key %q: %w", id, err)
		}
		keys[id] = b
	}
	return NewKeyring(kf.Current, keys)
}

// LoadKeyFile reads and opens a key file.
func LoadKeyFile(ctx context.Context, path string, u Unwrapper) (*Keyring, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("codec: %w", err)
	}
	kf, err := ParseKeyFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	kr, err := kf.Keyring(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("payload key file %s: %w", path, err)
	}
	return kr, nil
}

// WriteKeyFile writes kf to path as indented JSON, atomically (a temporary
// file in the same folder, renamed) with mode 0600, creating the folder
// (0700) if it is missing.
func WriteKeyFile(path string, kf KeyFile) error {
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".payload-keys-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
