#!/usr/bin/env bash
# Makes sure Debian's headless-capable Chromium is at /usr/bin/chromium, for the
# simulator's web chat browser test (buko/sim/webchat_test.go). Idempotent: does
# nothing when it is already installed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

if [ -x /usr/bin/chromium ]; then exit 0; fi
command -v apt-get >/dev/null || die "no /usr/bin/chromium and no apt-get to install it; install chromium by hand"

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "installing chromium needs root (no sudo here)"
  as_root=(sudo -n)
fi

say "installing chromium (apt-get)"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ] || die "apt-get finished but /usr/bin/chromium is missing"
say "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
