#!/usr/bin/env bash
# Helm for the chart tests (helm/chart_test.go): built once from the Go module
# proxy into the tools cache, with the Kubernetes version it assumes stamped in
# (a plain `go install` believes it talks to Kubernetes 1.20).
#   helm.sh build   build helm v3.22.0 unless it is already there (6–10 min cold)
#   helm.sh bin     print the path of the built binary (exit 1 if it is not built)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

VERSION=3.22.0
K8S_MAJOR=1
K8S_MINOR=37   # matches k8s.io/api v0.37.x used by the chart test
BIN_DIR="$AGENTRUNNER_TOOLS/helm-$VERSION"
BIN="$BIN_DIR/helm"

build() {
  [ -x "$BIN" ] && return 0
  say "building helm v$VERSION into $BIN_DIR (6–10 min on a cold machine)"
  mkdir -p "$BIN_DIR"
  local p=helm.sh/helm/v3
  local ldflags="-s -w -X $p/internal/version.version=v$VERSION"
  ldflags+=" -X $p/pkg/chartutil.k8sVersionMajor=$K8S_MAJOR -X $p/pkg/chartutil.k8sVersionMinor=$K8S_MINOR"
  ldflags+=" -X $p/pkg/lint/rules.k8sVersionMajor=$K8S_MAJOR -X $p/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR"
  # Build outside the repo so its go.mod does not apply; install to a temp name
  # first so an interrupted build never leaves a half-written binary at $BIN.
  local tmp; tmp=$(mktemp -d "$BIN_DIR/.build.XXXXXX")
  (cd "$tmp" && GOFLAGS= GOBIN="$tmp" go install -trimpath -ldflags="$ldflags" "$p/cmd/helm@v$VERSION") \
    || { rm -rf "$tmp"; die "building helm v$VERSION failed"; }
  mv "$tmp/helm" "$BIN"
  rm -rf "$tmp"
  say "helm: $("$BIN" version --short 2>/dev/null || echo built)"
}

case "${1:-build}" in
  build) build ;;
  bin)
    [ -x "$BIN" ] || die "helm v$VERSION is not built; run: bash deploy/dev/helm.sh build"
    echo "$BIN" ;;
  *) die "usage: helm.sh build|bin" ;;
esac
