// Package runner is the supervisor: membership, shard leases, fencing,
// reconcile sessions with bots, admin HTTP. It also owns the managed-bot
// registry (registry.go): the operator's view of the bots table, with each
// bot's token sealed into secret_vault through package vault and every
// change written to audit_log.
package runner
