// Package fleettest owns the runner's fleet tests and benchmarks: several
// `agentrunner serve` replicas as real processes (the binary is built once per
// run), against the simulator and a test database, checking the promises of
// docs/ownership.md end to end — every active bot held exactly once, kill -9
// and SIGTERM lose nothing, a replica cut off from Postgres stops its sessions
// before its leases expire, bot changes take effect at once — and measuring
// cold start, takeover, rolling-restart gaps and balance (docs/BENCHMARKS.md).
// It has no non-test code.
package fleettest
