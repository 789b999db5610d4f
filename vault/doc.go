// Package vault owns bot tokens at rest and in memory: the rows of
// secret_vault, the Cipher that seals and opens them (Vault Transit in
// production, a local AES-256-GCM keyring for dev and single machines), batch
// decryption, the runner's token cache, rewrap after a key rotation, the
// audit trail of token reads, and the redacting Token type.
//
// Every ciphertext is bound to its bot id — Transit derives the key with
// context = base64(bot id), the keyring uses the bot id as AES-GCM associated
// data — so a row copied onto another bot does not decrypt.
//
// A Cipher follows a Caddy-style lifecycle: construct it from a Config
// (NewCipher), then Provision (connect, log in, load keys), Validate, use, and
// Cleanup. Open does the first three.
//
// Tokens never appear in logs, errors, panics or metrics: a Token prints as
// "bot_…[redacted]" everywhere; only Token.Reveal, called at the wire, returns
// the secret.
package vault
