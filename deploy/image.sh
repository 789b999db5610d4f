#!/usr/bin/env bash
# `make image`: the release image from deploy/Dockerfile, built with podman and
# no Docker engine or registry. deploy/rootfs.sh (the Dockerfile's build stage)
# runs here, and its output replaces that stage as the named build context
# "build"; the final stage is FROM scratch, so nothing is pulled.
#   deploy/image.sh [IMAGE]     default localhost/agentrunner:$VERSION
# Environment: VERSION, COMMIT, DATE (default: from git, as `make build`).
# Prints the image id on stdout (progress on stderr).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/deploy/dev/lib.sh"
cd "$root"

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}
DATE=${DATE:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
IMAGE=${1:-localhost/agentrunner:$VERSION}
export VERSION COMMIT DATE

bash deploy/dev/podman.sh
CONTAINERS_CONF=$(bash deploy/dev/podman.sh conf)
export CONTAINERS_CONF

ctx=$(mktemp -d "${TMPDIR:-/tmp}/agentrunner-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
say "assembling the image's files (deploy/rootfs.sh)"
GOOS=linux GOARCH=${GOARCH:-$(go env GOARCH)} sh deploy/rootfs.sh "$ctx/out"
say "building $IMAGE (podman, from deploy/Dockerfile, no pull)"
podman build --pull=never --quiet --layers=false \
  --build-context build="$ctx" \
  --build-arg VERSION="$VERSION" --build-arg COMMIT="$COMMIT" --build-arg DATE="$DATE" \
  -f deploy/Dockerfile -t "$IMAGE" "$ctx" >&2
podman image inspect --format '{{.Id}}' "$IMAGE"
