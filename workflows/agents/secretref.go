package agents

// Secret references in agent configs: what a "secret" or "api_key" field may
// name, checked when a config is written (Validate) and again when it is
// resolved (Provision), so a reference can never reach an arbitrary
// environment variable of the worker.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"buko.app/agentrunner/permanent"
)

// EnvSecretPrefix is the only prefix an "env:NAME" reference may name: an agent
// config can read AGENTRUNNER_AGENT_SECRET_<anything>, and no other variable
// of the worker (not DATABASE_URL, not VAULT_TOKEN). It is fixed, not a
// setting, so that no configuration can widen it.
const EnvSecretPrefix = "AGENTRUNNER_AGENT_SECRET_"

// ErrSecretRef marks a secret reference of a form that is not allowed.
var ErrSecretRef = errors.New("secret reference not allowed")

// CheckSecretRef checks the form of a secret reference without resolving it:
// "env:AGENTRUNNER_AGENT_SECRET_<NAME>" (NAME of A–Z, 0–9, _), or a sealed
// value "<kind>:v<N>:<data>" made by `agentrunner codec seal-secret`. The
// error names the field and never quotes a value that could be a plaintext
// secret.
func CheckSecretRef(field, ref string) error {
	if ref == "" {
		return fmt.Errorf("%s is required", field)
	}
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		if !strings.HasPrefix(name, EnvSecretPrefix) || len(name) == len(EnvSecretPrefix) || !envName(name) {
			return fmt.Errorf("%s: %w: env:%s: an environment reference must name a variable %s<NAME> (A-Z, 0-9, _)",
				field, ErrSecretRef, truncate(name, 64), EnvSecretPrefix)
		}
		return nil
	}
	if !sealedShape(ref) {
		return fmt.Errorf("%s: %w: want env:%s<NAME> or a sealed value from `agentrunner codec seal-secret` (<kind>:v<N>:…); "+
			"a plaintext secret does not belong in the config", field, ErrSecretRef, EnvSecretPrefix)
	}
	return nil
}

func envName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// sealedShape reports whether ref looks like a ciphertext: <kind>:v<N>:<data>
// with a lower-case kind, a positive version and no spaces.
func sealedShape(ref string) bool {
	kind, rest, ok := strings.Cut(ref, ":")
	if !ok || kind == "" {
		return false
	}
	for i := 0; i < len(kind); i++ {
		if c := kind[i]; c < 'a' || c > 'z' {
			return false
		}
	}
	ver, data, ok := strings.Cut(rest, ":")
	if !ok || len(ver) < 2 || ver[0] != 'v' || data == "" {
		return false
	}
	for i := 1; i < len(ver); i++ {
		if c := ver[i]; c < '0' || c > '9' {
			return false
		}
	}
	return !strings.ContainsAny(ref, " \t\r\n")
}

// requiredSecret resolves the config field name's secret reference ref.
func requiredSecret(ctx context.Context, env Env, name, ref string) (string, error) {
	if err := CheckSecretRef(name, ref); err != nil {
		return "", permanent.Mark(err)
	}
	v, err := resolveSecret(ctx, env, ref)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return v, nil
}

// resolveSecret turns a checked secret reference into its value:
// "env:AGENTRUNNER_AGENT_SECRET_…" reads the worker's environment; anything
// else goes to env.Secrets (keyring or Vault), which opens it for env.Bot only.
func resolveSecret(ctx context.Context, env Env, ref string) (string, error) {
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		if !strings.HasPrefix(name, EnvSecretPrefix) { // CheckSecretRef ran; refuse again at use
			return "", permanent.Mark(fmt.Errorf("%w: env:%s", ErrSecretRef, name))
		}
		v := os.Getenv(name)
		if v == "" {
			return "", permanent.Mark(fmt.Errorf("environment variable %s is empty", name))
		}
		return v, nil
	}
	if env.Secrets == nil {
		return "", permanent.Mark(errors.New("no secret store configured for sealed secret references"))
	}
	return env.Secrets.Secret(ctx, env.Bot.ID, ref)
}
