#!/usr/bin/env bash
# The Temporal CLI's dev server for tests and dev.
#   temporal.sh build   build the CLI once into the tools cache (minutes cold, seconds warm)
#   temporal.sh start   start `temporal server start-dev --headless` on $TEMPORAL_ADDRESS unless one answers
#   temporal.sh stop    stop the server this script started
# TEMPORAL_DB=FILE makes the server persistent (sqlite with WAL); default in memory.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

VERSION=1.5.1   # newer CLIs carry replace directives and cannot be `go install`ed
BIN_DIR="$AGENTRUNNER_TOOLS/temporal-$VERSION"
BIN="$BIN_DIR/temporal"
ADDR="${TEMPORAL_ADDRESS:-127.0.0.1:7233}"
HOST="${ADDR%:*}"; PORT="${ADDR##*:}"
PIDF="$AGENTRUNNER_RUN/temporal.pid"; LOG="$AGENTRUNNER_RUN/temporal.log"

build() {
  [ -x "$BIN" ] && return 0
  say "building the Temporal CLI v$VERSION into $BIN_DIR (6–17 min on a cold machine)"
  mkdir -p "$BIN_DIR"
  (cd "$BIN_DIR" && GOFLAGS= GOBIN="$BIN_DIR" go install -trimpath \
     -ldflags="-s -w -X github.com/temporalio/cli/temporalcli.Version=$VERSION" \
     "github.com/temporalio/cli/cmd/temporal@v$VERSION")
}

answers() { "$BIN" operator namespace describe -n default --address "$ADDR" >/dev/null 2>&1; }

start() {
  build
  if answers; then return 0; fi
  if pid_alive "$PIDF"; then
    say "Temporal (pid $(cat "$PIDF")) is starting; waiting"
  else
    say "starting the Temporal dev server on $ADDR (log: $LOG)"
    local persist=()
    if [ -n "${TEMPORAL_DB:-}" ]; then
      persist=(--db-filename "$TEMPORAL_DB" --sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=normal)
    fi
    # Without timerProcessorMaxTimeShift, retry timers round up to ~1 s. The dev
    # server has one history shard whose task queues are polled at most 20 times
    # a second by default, which alone adds ~45 ms to every task dispatch
    # (docs/workflows.md); a real cluster spreads this over hundreds of shards.
    setsid nohup "$BIN" server start-dev --headless --ip "$HOST" --port "$PORT" --log-level warn \
      --dynamic-config-value 'history.timerProcessorMaxTimeShift="100ms"' \
      --dynamic-config-value history.transferProcessorMaxPollRPS=2000 \
      --dynamic-config-value history.timerProcessorMaxPollRPS=2000 \
      "${persist[@]}" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDF"
  fi
  wait_until 120 answers || { tail -20 "$LOG" >&2; die "Temporal did not answer on $ADDR within 120 s"; }
  say "Temporal answers on $ADDR"
}

stop() {
  if pid_alive "$PIDF"; then kill "$(cat "$PIDF")"; wait_until 20 bash -c "! kill -0 $(cat "$PIDF")" || kill -9 "$(cat "$PIDF")"; fi
  rm -f "$PIDF"
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  bin) build; echo "$BIN" ;;
  *) die "usage: temporal.sh build|start|stop|bin" ;;
esac
