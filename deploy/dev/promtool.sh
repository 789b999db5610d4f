#!/usr/bin/env bash
# Makes sure `promtool` (from Debian's prometheus package) is on PATH, for the
# chart test that checks the rendered PrometheusRule and for the alert-rule
# tests. Idempotent: does nothing when promtool is already there. The package's
# daemon is never left running: service starts are refused during the install
# and any prometheus process the install started anyway is stopped.
#   promtool.sh         install if missing
#   promtool.sh bin     print promtool's path (exit 1 if missing)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ "${1:-}" = bin ]; then
  command -v promtool || die "promtool is not installed; run: bash deploy/dev/promtool.sh"
  exit 0
fi
[ $# -eq 0 ] || [ "$1" = install ] || die "usage: promtool.sh [install|bin]"
if command -v promtool >/dev/null; then exit 0; fi
command -v apt-get >/dev/null || die "no promtool and no apt-get to install it; install Prometheus' promtool by hand"

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "installing prometheus needs root (no sudo here)"
  as_root=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive

# Refresh the package lists only when they do not know the package.
policy_out=$(apt-cache policy prometheus 2>/dev/null || true)
if ! grep -q 'Candidate: [0-9]' <<<"$policy_out"; then
  say "apt-get update (package lists do not know prometheus)"
  "${as_root[@]}" apt-get update -qq
fi

# Running daemons before the install, so only the ones it starts get stopped.
before=" $( (pgrep -x prometheus || true) | tr "\n" " ") "

# policy-rc.d exit 101 = "action forbidden": the package installs, its service does not start.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 755 "$policy"
  made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then "${as_root[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

say "installing prometheus for promtool (apt-get, ~1 min)"
"${as_root[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null

for pid in $(pgrep -x prometheus || true); do
  case "$before" in *" $pid "*) continue ;; esac
  say "stopping the prometheus daemon the package started (pid $pid)"
  "${as_root[@]}" kill "$pid" 2>/dev/null || true
  wait_until 20 bash -c "! kill -0 $pid" || "${as_root[@]}" kill -9 "$pid" 2>/dev/null || true
done

command -v promtool >/dev/null || die "apt-get finished but promtool is missing"
say "promtool: $(promtool --version 2>&1 | head -1)"
