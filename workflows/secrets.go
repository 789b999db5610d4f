package workflows

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"buko.app/agentrunner/permanent"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows/agents"
	"buko.app/agentrunner/workflows/codec"
)

// The vault cipher seals bot tokens ("bot_…", bound to a bot id). Agent
// secrets and payload-codec keys ride on it: the secret is base64url-encoded
// behind the token prefix, and sealed bound to AgentSecretBinding(bot id)
// (agent secrets) or to CodecKeyBinding (codec keys). So they live in the
// local keyring or in Vault Transit exactly as tokens do, in domains of their
// own: a ciphertext copied onto another bot does not open, a bot's token
// ciphertext (secret_vault.ciphertext, bound to the bare bot id) does not open
// as an agent secret, and an agent secret does not open as a token.

// CodecKeyBinding is the id codec keys are bound to in the cipher.
const CodecKeyBinding = "agentrunner:payload-codec"

// agentSecretDomain prefixes the binding of agent secrets. Bot ids are Buko's
// ("bot_…") and never contain a colon, so no bot id equals a binding.
const agentSecretDomain = "agent-secret:"

// AgentSecretBinding is the id an agent secret of botID is bound to.
func AgentSecretBinding(botID string) string { return agentSecretDomain + botID }

// ErrLegacySecret: a sealed agent secret opens only under the bare bot id —
// the binding of bot tokens, used for agent secrets before they had a domain
// of their own (or it is the bot's token ciphertext itself). It is refused:
// seal the secret again with `agentrunner codec seal-secret` and set it with
// `agentrunner bots set-agent`.
var ErrLegacySecret = errors.New("agent secret sealed with the bot-token binding (sealed before agent secrets had their own binding, or a token ciphertext): refused; run `agentrunner bots migrate-secrets`, or seal it again with `agentrunner codec seal-secret` and set it with `agentrunner bots set-agent`")

// maxSealedSecret keeps the encoded form within vault.MaxTokenLen.
const maxSealedSecret = (vault.MaxTokenLen - len(vault.TokenPrefix)) * 3 / 4

func sealValue(ctx context.Context, c vault.Cipher, binding string, secret []byte) (string, error) {
	if len(secret) == 0 || len(secret) > maxSealedSecret {
		return "", fmt.Errorf("workflows: secret must be 1–%d bytes", maxSealedSecret)
	}
	tok, err := vault.ParseToken(vault.TokenPrefix + base64.RawURLEncoding.EncodeToString(secret))
	if err != nil {
		return "", fmt.Errorf("workflows: wrap secret: %w", err)
	}
	sealed, err := c.Encrypt(ctx, []vault.Plaintext{{BotID: binding, Token: tok}})
	if err != nil {
		return "", fmt.Errorf("workflows: seal secret: %w", err)
	}
	return sealed[0].Ciphertext, nil
}

func openValue(ctx context.Context, c vault.Cipher, binding, ciphertext string) ([]byte, error) {
	toks, err := c.Decrypt(ctx, []vault.Sealed{{BotID: binding, Ciphertext: ciphertext}})
	if err != nil {
		return nil, fmt.Errorf("workflows: open secret: %w", err)
	}
	enc, ok := strings.CutPrefix(toks[0].Reveal(), vault.TokenPrefix)
	if !ok {
		return nil, errors.New("workflows: sealed value is not a wrapped secret")
	}
	b, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil, errors.New("workflows: sealed value is not a wrapped secret")
	}
	return b, nil
}

// SealSecret seals an agent secret (API key, HMAC secret) for botID, bound
// to AgentSecretBinding(botID); the result goes into bots.agent_config where
// the agent expects a secret reference.
func SealSecret(ctx context.Context, c vault.Cipher, botID, secret string) (string, error) {
	if botID == "" || strings.Contains(botID, ":") {
		return "", errors.New("workflows: seal secret: a bot id (bot_…) is required")
	}
	return sealValue(ctx, c, AgentSecretBinding(botID), []byte(secret))
}

// VaultSecrets resolves agents' secret references sealed with SealSecret.
type VaultSecrets struct{ Cipher vault.Cipher }

var _ agents.Secrets = VaultSecrets{}

// Secret opens ref for botID, in the agent-secret domain only. When it does
// not open there but does under the bot-token binding, the error is
// ErrLegacySecret (the value is discarded, never used).
func (v VaultSecrets) Secret(ctx context.Context, botID, ref string) (string, error) {
	if botID == "" || strings.Contains(botID, ":") {
		return "", errors.New("workflows: open secret: a bot id (bot_…) is required")
	}
	b, err := openValue(ctx, v.Cipher, AgentSecretBinding(botID), ref)
	if err == nil {
		return string(b), nil
	}
	if errors.Is(err, vault.ErrCiphertext) {
		if _, lerr := v.Cipher.Decrypt(ctx, []vault.Sealed{{BotID: botID, Ciphertext: ref}}); lerr == nil {
			return "", permanent.Mark(ErrLegacySecret)
		}
		return "", permanent.Mark(err)
	}
	return "", err
}

// ErrTokenAsSecret: a value in an agent config opens as the bot's own token
// (a secret_vault ciphertext copied into the config). It is never re-sealed.
var ErrTokenAsSecret = errors.New("the sealed value is the bot's own token, not an agent secret: refused (remove it from the agent config)")

// ResealLegacySecret migrates one sealed agent secret of botID to the
// agent-secret domain. A ref that already opens there comes back unchanged
// (changed false). A ref that opens only under the old binding (the bare bot
// id) is re-sealed — unless what it holds is botToken, the bot's own token,
// which is ErrTokenAsSecret. Anything else is the open error. The secret
// itself never leaves this function.
func ResealLegacySecret(ctx context.Context, c vault.Cipher, botID, ref string, botToken vault.Token) (newRef string, changed bool, err error) {
	if _, err := openValue(ctx, c, AgentSecretBinding(botID), ref); err == nil {
		return ref, false, nil
	}
	toks, err := c.Decrypt(ctx, []vault.Sealed{{BotID: botID, Ciphertext: ref}})
	if err != nil {
		return "", false, fmt.Errorf("workflows: open legacy secret: %w", err)
	}
	if !botToken.IsZero() && toks[0].Equal(botToken) {
		return "", false, ErrTokenAsSecret
	}
	b, err := openValue(ctx, c, botID, ref)
	if err != nil {
		return "", false, err
	}
	out, err := sealValue(ctx, c, AgentSecretBinding(botID), b)
	if err != nil {
		return "", false, err
	}
	return out, true, nil
}

// WrapCodecKey seals a payload-codec key for a codec.KeyFile.
func WrapCodecKey(ctx context.Context, c vault.Cipher, key []byte) (string, error) {
	return sealValue(ctx, c, CodecKeyBinding, key)
}

// KeyUnwrapper opens codec keys wrapped with WrapCodecKey.
type KeyUnwrapper struct{ Cipher vault.Cipher }

var _ codec.Unwrapper = KeyUnwrapper{}

// Unwrap implements codec.Unwrapper. A key that does not open is a
// *KeyOpenError naming the cipher (it is vault.ErrCiphertext for errors.Is).
func (u KeyUnwrapper) Unwrap(ctx context.Context, wrapped string) ([]byte, error) {
	b, err := openValue(ctx, u.Cipher, CodecKeyBinding, wrapped)
	if errors.Is(err, vault.ErrCiphertext) {
		return nil, &KeyOpenError{Cipher: u.Cipher.Kind(), KeyRef: u.Cipher.KeyRef()}
	}
	return b, err
}

// KeyOpenError is a payload key that the configured token cipher cannot
// open: it was wrapped by another cipher, keyring or Vault key. Its message
// names the cipher, and LoadKeyFile's names the file.
type KeyOpenError struct {
	Cipher string // vault.KindLocal or vault.KindTransit
	KeyRef string // the cipher's key (keyring or Transit key name)
}

func (e *KeyOpenError) Error() string {
	return fmt.Sprintf("does not open with the %s cipher (key %s): it was wrapped by another cipher or key", e.Cipher, e.KeyRef)
}

// Unwrap makes errors.Is(err, vault.ErrCiphertext) true.
func (e *KeyOpenError) Unwrap() error { return vault.ErrCiphertext }
