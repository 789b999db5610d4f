#!/usr/bin/env bash
# Copies the alert rules (deploy/prometheus/*.yaml|*.yml with a top-level
# `groups:`) and the Grafana dashboards (deploy/grafana/*.json) into the Helm
# chart's files/, so the chart ships exactly what deploy/ holds. The chart's copy
# of a kind is replaced only when deploy/ has at least one file of that kind
# (until then the chart keeps its placeholder). helm/chart_test.go fails when the
# copies drift. Idempotent; run it after changing deploy/prometheus or deploy/grafana.
#   sync-chart-files.sh          copy
#   sync-chart-files.sh --check  exit 1 if the chart's copies differ
set -euo pipefail
. "$(dirname "$0")/lib.sh"

root=$(cd "$(dirname "$0")/../.." && pwd)
chart="$root/helm/agentrunner/files"
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) die "usage: sync-chart-files.sh [--check]" ;;
esac

# sources KIND: the files of deploy/ that the chart ships, one per line.
sources() {
  local f
  case "$1" in
    prometheus)
      for f in "$root"/deploy/prometheus/*.yaml "$root"/deploy/prometheus/*.yml; do
        [ -f "$f" ] && grep -q '^groups:' "$f" && echo "$f"
      done ;;
    grafana)
      for f in "$root"/deploy/grafana/*.json; do
        [ -f "$f" ] && echo "$f"
      done ;;
  esac
  return 0
}

drift=0
for kind in prometheus grafana; do
  mapfile -t src < <(sources "$kind")
  [ "${#src[@]}" -gt 0 ] || { say "deploy/$kind: nothing to ship yet; the chart keeps its placeholder"; continue; }
  dst="$chart/$kind"
  mkdir -p "$dst"
  # Files in the chart that deploy/ no longer has.
  for f in "$dst"/*; do
    [ -f "$f" ] || continue
    keep=0
    for s in "${src[@]}"; do [ "$(basename "$s")" = "$(basename "$f")" ] && keep=1; done
    if [ "$keep" = 0 ]; then
      if [ "$check" = 1 ]; then say "stale in chart: ${f#"$root"/}"; drift=1; else rm -f "$f"; say "removed ${f#"$root"/}"; fi
    fi
  done
  for s in "${src[@]}"; do
    d="$dst/$(basename "$s")"
    if ! cmp -s "$s" "$d"; then
      if [ "$check" = 1 ]; then say "differs: ${s#"$root"/} vs ${d#"$root"/}"; drift=1; else cp "$s" "$d"; say "copied ${s#"$root"/}"; fi
    fi
  done
done
if [ "$drift" = 1 ]; then die "the chart's copies differ from deploy/: run deploy/dev/sync-chart-files.sh"; fi
