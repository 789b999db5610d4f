#!/usr/bin/env bash
# A production-shaped Temporal server for tests: go.temporal.io/server on SQL
# persistence (the machine's Postgres, databases of its own for history and
# visibility, schemas set up and upgraded by temporal-sql-tool), 4 history
# shards, its own ports. The dev server (temporal.sh) stays the default for
# `make dev` and quick tests; this one is $AGENTRUNNER_TEMPORAL_SQL_ADDR.
#   temporal-server.sh build    build temporal-server and temporal-sql-tool once into the tools cache
#   temporal-server.sh start    create/upgrade the databases, write the config, start unless it answers
#   temporal-server.sh stop     stop the server this script started (data kept)
#   temporal-server.sh status   say whether it answers
#   temporal-server.sh env      the export lines for services.env
# Settings (environment): TEMPORAL_SQL_PORT (frontend gRPC, default 27233; the
# other services use the next ports: +1 history, +2 matching, +3 worker, +4 HTTP,
# +5 metrics, +10..+13 membership), TEMPORAL_SQL_PG (default 127.0.0.1:5432),
# TEMPORAL_SQL_PG_USER (postgres), TEMPORAL_SQL_DB (agentrunner_temporal; the
# visibility database gets the suffix _visibility), TEMPORAL_SQL_SHARDS (4),
# TEMPORAL_SQL_NAME (temporal-sql: the run-folder name of pid, log and config).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

VERSION=1.29.1   # the server inside the Temporal CLI 1.5.1 (temporal.sh): same history semantics as the dev server
BIN_DIR="$AGENTRUNNER_TOOLS/temporal-server-$VERSION"
SERVER="$BIN_DIR/temporal-server"
SQLTOOL="$BIN_DIR/temporal-sql-tool"
PORT="${TEMPORAL_SQL_PORT:-27233}"
ADDR="127.0.0.1:$PORT"
PG="${TEMPORAL_SQL_PG:-127.0.0.1:5432}"
PG_HOST="${PG%:*}"; PG_PORT="${PG##*:}"
PG_USER="${TEMPORAL_SQL_PG_USER:-postgres}"
DB="${TEMPORAL_SQL_DB:-agentrunner_temporal}"
VDB="${DB}_visibility"
SHARDS="${TEMPORAL_SQL_SHARDS:-4}"
NAME="${TEMPORAL_SQL_NAME:-temporal-sql}"
DIR="$AGENTRUNNER_RUN/$NAME"
PIDF="$AGENTRUNNER_RUN/$NAME.pid"; LOG="$AGENTRUNNER_RUN/$NAME.log"

build() {
  [ -x "$SERVER" ] && [ -x "$SQLTOOL" ] && return 0
  say "building temporal-server and temporal-sql-tool v$VERSION into $BIN_DIR (minutes cold)"
  mkdir -p "$BIN_DIR/.gobin"
  (cd "$BIN_DIR" && GOFLAGS= GOBIN="$BIN_DIR/.gobin" go install -trimpath -ldflags='-s -w' \
     "go.temporal.io/server/cmd/server@v$VERSION" "go.temporal.io/server/cmd/tools/sql@v$VERSION")
  mv "$BIN_DIR/.gobin/sql" "$SQLTOOL"
  mv "$BIN_DIR/.gobin/server" "$SERVER"
  rmdir "$BIN_DIR/.gobin"
}

# The schema files ship in the server module, in the module cache after the build.
schema_dir() {
  local d
  d=$(cd "$BIN_DIR" && GOFLAGS= go mod download -json "go.temporal.io/server@v$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$d/schema/postgresql/v12" ] || die "no schema/postgresql/v12 in the server module ($d)"
  echo "$d/schema/postgresql/v12"
}

sqltool() { "$SQLTOOL" --ep "$PG_HOST" -p "$PG_PORT" -u "$PG_USER" --pl postgres12 "$@" >>"$AGENTRUNNER_RUN/$NAME-schema.log" 2>&1; }

# setup_db NAME SCHEMA: create the database if missing, lay the base schema
# once, then upgrade it to the newest version the module ships (idempotent).
setup_db() {
  local name=$1 schema=$2
  psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$name'" | grep -q 1 ||
    sqltool --db "$name" create-database >/dev/null
  if ! psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d "$name" -tAc "SELECT 1 FROM pg_tables WHERE tablename='schema_version'" | grep -q 1; then
    sqltool --db "$name" setup-schema -v 0.0 >/dev/null
  fi
  sqltool --db "$name" update-schema -d "$schema/versioned" >/dev/null
}

write_config() {
  mkdir -p "$DIR/config"
  cat >"$DIR/config/dynamic.yaml" <<'EOF'
# Retry timers fire within 100 ms instead of ~1 s (as for the dev server, temporal.sh).
history.timerProcessorMaxTimeShift:
  - value: 100ms
limit.maxIDLength:
  - value: 255
frontend.enableExecuteMultiOperation:
  - value: true
EOF
  sqlstore() {
    cat <<EOF
      sql:
        pluginName: postgres12
        databaseName: $1
        connectAddr: "$PG"
        connectProtocol: tcp
        user: $PG_USER
        password: ""
        maxConns: $2
        maxIdleConns: $2
        maxConnLifetime: 1h
EOF
  }
  svc() { # name grpcPortOffset membershipOffset
    cat <<EOF
  $1:
    rpc:
      grpcPort: $((PORT + $2))
      membershipPort: $((PORT + $3))
      bindOnIP: 127.0.0.1
EOF
  }
  {
    cat <<EOF
log:
  stdout: true
  level: warn
persistence:
  defaultStore: default
  visibilityStore: visibility
  numHistoryShards: $SHARDS
  datastores:
    default:
$(sqlstore "$DB" 20)
    visibility:
$(sqlstore "$VDB" 4)
global:
  membership:
    maxJoinDuration: 30s
    broadcastAddress: 127.0.0.1
  metrics:
    prometheus:
      framework: tally
      timerType: histogram
      listenAddress: 127.0.0.1:$((PORT + 5))
services:
$(svc frontend 0 10)
      httpPort: $((PORT + 4))
$(svc history 1 11)
$(svc matching 2 12)
$(svc worker 3 13)
clusterMetadata:
  enableGlobalNamespace: false
  failoverVersionIncrement: 10
  masterClusterName: active
  currentClusterName: active
  clusterInformation:
    active:
      enabled: true
      initialFailoverVersion: 1
      rpcName: frontend
      rpcAddress: $ADDR
      httpAddress: 127.0.0.1:$((PORT + 4))
dcRedirectionPolicy:
  policy: noop
dynamicConfigClient:
  filepath: $DIR/config/dynamic.yaml
  pollInterval: 10s
EOF
  } >"$DIR/config/development.yaml"
}

# The CLI from temporal.sh talks to the frontend (namespace calls).
cli() { "$("$(dirname "$0")/temporal.sh" bin)" "$@"; }
answers() { cli operator cluster health --address "$ADDR" 2>/dev/null | grep -q SERVING; }
has_default() { cli operator namespace describe -n default --address "$ADDR" >/dev/null 2>&1; }

start() {
  build
  if answers && has_default; then say "Temporal server (SQL) answers on $ADDR"; return 0; fi
  if pid_alive "$PIDF"; then
    say "Temporal server (pid $(cat "$PIDF")) is starting; waiting"
  else
    local schema; schema=$(schema_dir)
    say "setting up $DB and $VDB on $PG (temporal-sql-tool)"
    setup_db "$DB" "$schema/temporal"
    setup_db "$VDB" "$schema/visibility"
    write_config
    say "starting the Temporal server on $ADDR, $SHARDS history shards (log: $LOG)"
    setsid nohup "$SERVER" --root "$DIR" --config config --env development --allow-no-auth start \
      >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDF"
  fi
  wait_until 180 answers || { tail -20 "$LOG" >&2; die "the Temporal server did not answer on $ADDR within 180 s"; }
  if ! has_default; then
    cli operator namespace create -n default --retention 24h --address "$ADDR" >/dev/null 2>&1 || true
    wait_until 60 has_default || die "namespace default not usable on $ADDR"
  fi
  say "Temporal server (SQL) answers on $ADDR"
}

stop() {
  if pid_alive "$PIDF"; then
    kill "$(cat "$PIDF")"
    wait_until 30 bash -c "! kill -0 $(cat "$PIDF")" || kill -9 "$(cat "$PIDF")"
  fi
  rm -f "$PIDF"
}

status() {
  if answers; then echo "answers on $ADDR (pid $(cat "$PIDF" 2>/dev/null || echo '?'))"; else echo "not answering on $ADDR"; return 1; fi
}

case "${1:-start}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env)
    echo "export AGENTRUNNER_TEMPORAL_SQL_ADDR=$ADDR"
    echo "export AGENTRUNNER_TEMPORAL_SERVER_BIN=$SERVER"
    echo "export AGENTRUNNER_TEMPORAL_SQL_TOOL_BIN=$SQLTOOL"
    echo "export AGENTRUNNER_TEMPORAL_SCHEMA_DIR=$(schema_dir)"
    ;;
  *) die "usage: temporal-server.sh build|start|stop|status|env" ;;
esac
