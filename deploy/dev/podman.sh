#!/usr/bin/env bash
# Podman (with buildah and runc) from Debian's packages, for `make image` and the
# image run test (deploy/image_test.go). There is no Docker engine here and no
# registry to pull from: the image's final stage is FROM scratch.
# Idempotent: installs only what is missing, and writes a containers.conf that
# works on this VM (crun fails on its rlimits and hybrid cgroups; the hard
# open-file limit is below podman's default and CAP_SYS_RESOURCE is absent).
#   podman.sh           install if missing, write the config
#   podman.sh bin       print podman's path (exit 1 if missing)
#   podman.sh conf      print the CONTAINERS_CONF path
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CONF="$AGENTRUNNER_RUN/containers.conf"

write_conf() {
  cat >"$CONF.tmp" <<'EOF'
# Written by deploy/dev/podman.sh; used as CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
  mv "$CONF.tmp" "$CONF"
}

case "${1:-install}" in
  bin) command -v podman || die "podman is not installed; run: bash deploy/dev/podman.sh"; exit 0 ;;
  conf) echo "$CONF"; exit 0 ;;
  install) ;;
  *) die "usage: podman.sh [install|bin|conf]" ;;
esac

write_conf
missing=()
for c in podman buildah runc; do command -v "$c" >/dev/null || missing+=("$c"); done
[ ${#missing[@]} -eq 0 ] && exit 0
command -v apt-get >/dev/null || die "no ${missing[*]} and no apt-get to install them; install podman, buildah and runc by hand"
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "installing podman needs root (no sudo here)"
  as_root=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache policy podman 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  say "apt-get update (package lists do not know podman)"
  "${as_root[@]}" apt-get update -qq
fi
say "installing podman, buildah and runc (apt-get, ~1 min)"
"${as_root[@]}" apt-get install -y -qq --no-install-recommends podman buildah runc \
  uidmap fuse-overlayfs slirp4netns containernetworking-plugins >/dev/null
command -v podman >/dev/null || die "apt-get finished but podman is missing"
say "podman: $(podman --version)"
