#!/usr/bin/env bash
# A real Vault dev server with Transit, for tests and `make dev`.
#   vault.sh build   build Vault v1.21.4 once into the tools cache (10–20 min cold, skipped when present)
#   vault.sh start   start `vault server -dev` on 127.0.0.1:<free port> with a random root token unless
#                    the server named in $AGENTRUNNER_RUN/vault.env answers; enables transit, creates the
#                    derived key, writes vault.env (VAULT_ADDR, VAULT_TOKEN, AGENTRUNNER_VAULT_BIN)
#   vault.sh stop    stop the server this script started
#   vault.sh bin     print the binary's path (building it if needed)
# Vault 1.21 is under the BSL 1.1: the binary is a local test/dev server only; never ship it.
# Dev mode keeps everything in memory: a restart loses the Transit keys (and every ciphertext).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

VERSION=1.21.4   # pinned: other versions need other source adaptations
BIN_DIR="$AGENTRUNNER_TOOLS/vault-$VERSION"
BIN="$BIN_DIR/vault"
SRC="$AGENTRUNNER_CACHE/src/vault-$VERSION"
PIDF="$AGENTRUNNER_RUN/vault.pid"; LOG="$AGENTRUNNER_RUN/vault.log"
ENVF="$AGENTRUNNER_RUN/vault.env"
MOUNT="${AGENTRUNNER_TRANSIT_MOUNT:-transit}"
KEY="${AGENTRUNNER_TRANSIT_KEY:-agentrunner-tokens}"

# adapt FILE FROM TO: replace one exact line fragment, failing loudly if it is not there.
adapt() {
  local file=$1 from=$2 to=$3
  grep -qF -- "$from" "$file" || die "vault source adaptation: '$from' not found in $file"
  FROM="$from" TO="$to" perl -0pi -e 's/\Q$ENV{FROM}\E/$ENV{TO}/' "$file"
}

build() {
  [ -x "$BIN" ] && return 0
  command -v go >/dev/null || die "go is not installed"
  say "building Vault v$VERSION into $BIN_DIR (10–20 min and ~3.4 GB RAM on a cold machine)"
  local mod
  mod=$(cd /tmp && GOFLAGS= go mod download -json "github.com/hashicorp/vault@v$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$mod" ] || die "go mod download of github.com/hashicorp/vault@v$VERSION failed"
  # A fresh copy every time: the module cache is read-only and a half-adapted tree is worthless.
  rm -rf "$SRC"; mkdir -p "$(dirname "$SRC")"
  cp -r "$mod" "$SRC"; chmod -R u+w "$SRC"
  # The module download lacks the nested modules these point at; use their published versions.
  sed -i -E '/^replace github\.com\/hashicorp\/vault\/(api|api\/auth\/approle|api\/auth\/kubernetes|api\/auth\/userpass|sdk) =>/d' "$SRC/go.mod"
  # Three call sites that changed in the published sdk v0.21.0.
  adapt "$SRC/vault/identity_store.go" \
    'ActivationFunc: iStore.activateDeduplication,' \
    'ActivationFunc: func(ctx context.Context, req *logical.Request, _ string) error { return iStore.activateDeduplication(ctx, req) },'
  adapt "$SRC/vault/logical_system_activation_flags.go" \
    'b.idStoreBackend.ActivationFunc(ctx, nil)' \
    'b.idStoreBackend.ActivationFunc(ctx, nil, "")'
  adapt "$SRC/builtin/logical/transit/path_restore.go" \
    'restoredKeyName, err := b.lm.RestorePolicy(ctx, req.Storage, keyName, backupB64, force)' \
    'restoredKeyName, err := keyName, b.lm.RestorePolicy(ctx, req.Storage, keyName, backupB64, force)'
  mkdir -p "$BIN_DIR"
  (cd "$SRC" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -tags minimal -trimpath -ldflags='-s -w' -o "$BIN.tmp" .)
  mv "$BIN.tmp" "$BIN"
  rm -rf "$SRC"
  say "built $BIN"
}

# answers: the server in vault.env is up, unsealed, and its token works.
answers() {
  [ -f "$ENVF" ] || return 1
  (
    . "$ENVF"
    curl -fsS -m 3 -H "X-Vault-Token: $VAULT_TOKEN" "$VAULT_ADDR/v1/auth/token/lookup-self" >/dev/null
  )
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null && return 0
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 40000))
    if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

start() {
  build
  if answers; then say "Vault already answers ($(. "$ENVF"; echo "$VAULT_ADDR"))"; return 0; fi
  stop
  local port token addr
  port=$(free_port)
  token="root-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  addr="http://127.0.0.1:$port"
  say "starting the Vault dev server on $addr (log: $LOG)"
  # The dev server prints its root token in the log: keep the log private, and
  # the token out of ~/.vault-token.
  rm -f "$LOG"; (umask 077; : >"$LOG")
  setsid nohup "$BIN" server -dev -dev-no-store-token -dev-root-token-id="$token" \
    -dev-listen-address="127.0.0.1:$port" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDF"
  local tmp="$ENVF.tmp"
  printf 'export VAULT_ADDR=%s\nexport VAULT_TOKEN=%s\nexport AGENTRUNNER_VAULT_BIN=%s\n' "$addr" "$token" "$BIN" >"$tmp"
  chmod 600 "$tmp"; mv "$tmp" "$ENVF"
  wait_until 60 answers || { tail -20 "$LOG" >&2; die "Vault did not answer on $addr within 60 s"; }
  VAULT_ADDR="$addr" VAULT_TOKEN="$token" "$BIN" secrets enable -path="$MOUNT" transit >/dev/null
  VAULT_ADDR="$addr" VAULT_TOKEN="$token" "$BIN" write -f "$MOUNT/keys/$KEY" derived=true >/dev/null
  say "Vault answers on $addr (transit at $MOUNT/, key $KEY; source $ENVF)"
}

stop() {
  if pid_alive "$PIDF"; then
    local pid; pid=$(cat "$PIDF")
    kill "$pid"
    wait_until 20 bash -c "! kill -0 $pid" || kill -9 "$pid"
  fi
  rm -f "$PIDF" "$ENVF"
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  bin) build; echo "$BIN" ;;
  *) die "usage: vault.sh build|start|stop|bin" ;;
esac
