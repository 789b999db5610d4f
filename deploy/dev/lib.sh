# Shared settings for the dev/test service scripts (sourced, not run).
# Tools are built once per version into $AGENTRUNNER_TOOLS; running services
# keep their pid, log and connection details in $AGENTRUNNER_RUN.
: "${AGENTRUNNER_CACHE:=$HOME/.cache/agentrunner}"
: "${AGENTRUNNER_TOOLS:=$AGENTRUNNER_CACHE/tools}"
: "${AGENTRUNNER_RUN:=$AGENTRUNNER_CACHE/run}"
mkdir -p "$AGENTRUNNER_TOOLS" "$AGENTRUNNER_RUN"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# wait_until SECONDS CMD...: run CMD until it succeeds or SECONDS pass.
wait_until() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# pid_alive FILE: the pid in FILE names a live process.
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
