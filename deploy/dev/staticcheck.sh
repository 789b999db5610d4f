#!/usr/bin/env bash
# staticcheck for `make test`: built once from the Go module proxy into the
# tools cache, pinned to one version so every machine reports the same findings.
#   staticcheck.sh build   build staticcheck unless it is already there
#   staticcheck.sh bin     print the path of the built binary (exit 1 if it is not built)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

VERSION=0.8.2   # honnef.co/go/tools v0.8.2 (staticcheck 2026.1.x)
BIN_DIR="$AGENTRUNNER_TOOLS/staticcheck-$VERSION"
BIN="$BIN_DIR/staticcheck"

build() {
  [ -x "$BIN" ] && return 0
  say "building staticcheck v$VERSION into $BIN_DIR"
  mkdir -p "$BIN_DIR"
  # Build outside the repo so its go.mod does not apply; install to a temp name
  # first so an interrupted build never leaves a half-written binary at $BIN.
  local tmp; tmp=$(mktemp -d "$BIN_DIR/.build.XXXXXX")
  (cd "$tmp" && GOFLAGS= GOBIN="$tmp" go install -trimpath "honnef.co/go/tools/cmd/staticcheck@v$VERSION") \
    || { rm -rf "$tmp"; die "building staticcheck v$VERSION failed"; }
  mv "$tmp/staticcheck" "$BIN"
  rm -rf "$tmp"
  say "staticcheck: $("$BIN" -version 2>/dev/null || echo built)"
}

case "${1:-build}" in
  build) build ;;
  bin)
    [ -x "$BIN" ] || die "staticcheck v$VERSION is not built; run: bash deploy/dev/staticcheck.sh build"
    echo "$BIN" ;;
  *) die "usage: staticcheck.sh build|bin" ;;
esac
