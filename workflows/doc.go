// Package workflows owns agentrunner's durable processing on Temporal: the
// Handoff that sessions call (SignalWithStart of the per-chat workflow), the
// ChatWorkflow (dedupe by update_id, order within a chat, agent then actions,
// continue-as-new, idle end, versioning), the activities that call the agent
// and the Bot API (tokens resolved by bot id in the worker, per-bot tier
// quotas and a per-bot concurrency bound), the worker that hosts them, and the
// client options that plug in the payload codec (package workflows/codec).
// Agents themselves live in workflows/agents.
//
// It imports buko and vault only among agentrunner's packages.
package workflows
