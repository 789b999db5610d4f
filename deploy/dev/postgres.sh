#!/usr/bin/env bash
# Makes sure the machine's Postgres answers on 127.0.0.1:5432; starts the local
# cluster if it is down. Tests create (and drop) their own databases.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ready() { pg_isready -q -h 127.0.0.1 -p 5432; }
if ready; then exit 0; fi
say "Postgres is down; starting the local cluster"
command -v pg_ctlcluster >/dev/null || die "no Postgres on this machine (pg_ctlcluster missing); install postgresql"
ver=$(ls /etc/postgresql | sort -V | tail -1)
pg_ctlcluster --skip-systemctl-redirect "$ver" main start
wait_until 30 ready || die "Postgres did not answer on 127.0.0.1:5432 within 30 s"
