// Package soak owns `agentrunner soak`: it brings up a production-shaped
// stack on this machine — the Buko simulator (in process), three `serve`
// replicas and a separate `worker` (child processes of the agentrunner
// binary), a Postgres cluster of its own (initdb/pg_ctl in a temporary
// folder), a Temporal server on SQL persistence with several history shards,
// and a Vault server with Transit on file storage — drives chat traffic from
// hundreds of bots, breaks every dependency on a seeded, logged schedule, and
// then checks the delivery invariants from the simulator's own records
// (docs/soak.md). Nothing here is used by serve or worker.
package soak
