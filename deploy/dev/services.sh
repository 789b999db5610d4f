#!/usr/bin/env bash
# `make services`: everything the tests and `make dev` need, idempotently, from a
# fresh machine: Postgres answering, the Temporal dev server, a Vault dev server
# with Transit, Chromium for the browser tests, and staticcheck for `make test`. Builds are cached by version
# under ~/.cache/agentrunner/tools, so a warm machine takes seconds.
# Afterwards $AGENTRUNNER_RUN/services.env holds the addresses for `source`.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

"$here/postgres.sh"
# The long builds first, so their time overlaps nothing else.
"$here/temporal.sh" build
"$here/temporal-server.sh" build   # production-shaped Temporal on SQL (AGENTRUNNER_TEMPORAL_SQL_ADDR)
optional() { if [ -x "$here/$1" ]; then "$here/$@"; fi; }
optional vault.sh build
optional helm.sh build
optional kube.sh build
"$here/staticcheck.sh" build
"$here/temporal.sh" start
"$here/temporal-server.sh" start
optional vault.sh start
optional chromium.sh
optional promtool.sh
optional podman.sh
optional kube.sh start

env_file="$AGENTRUNNER_RUN/services.env"
{
  echo "export TEMPORAL_ADDRESS=${TEMPORAL_ADDRESS:-127.0.0.1:7233}"
  echo "export AGENTRUNNER_TEMPORAL_BIN=$("$here/temporal.sh" bin)"
  "$here/temporal-server.sh" env
  if [ -x "$here/vault.sh" ] && [ -f "$AGENTRUNNER_RUN/vault.env" ]; then cat "$AGENTRUNNER_RUN/vault.env"; fi
  if [ -x "$here/helm.sh" ]; then echo "export AGENTRUNNER_HELM_BIN=$("$here/helm.sh" bin)"; fi
  if [ -x "$here/kube.sh" ]; then "$here/kube.sh" env; fi
  echo "export AGENTRUNNER_STATICCHECK_BIN=$("$here/staticcheck.sh" bin)"
} >"$env_file"
say "services ready ($env_file)"
