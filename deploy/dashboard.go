package deploy

//lint:file-ignore SA1019 The chart ships the classic dashboard JSON (schema v1, package dashboard), which every Grafana the chart supports imports; the SDK's dashboardv2 is a different schema for Grafana 12's v2 API, a change of what we ship, not a rename.

import (
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// DashboardUID is the Grafana uid of the agentrunner dashboard.
const DashboardUID = "agentrunner"

// DashboardFile is where the generated dashboard lives, relative to deploy/.
const DashboardFile = "grafana/agentrunner.json"

// rate is the range of every rate() on the dashboard: Grafana's rate
// interval, at least four scrape intervals.
const rate = "[$__rate_interval]"

// jobs selects agentrunner's scrape targets for the metrics that are not ours
// (up, process_*, go_*): the chart's ServiceMonitor names the jobs after the
// release's Services, which contain "agentrunner".
const jobs = `{job=~".*agentrunner.*"}`

type query struct{ expr, legend string }

type panelKind int

const (
	timeSeries panelKind = iota
	singleStat
)

// panelSpec is one panel; width and height are in grid units (24 per row).
type panelSpec struct {
	kind        panelKind
	title       string
	description string
	unit        string
	width       uint32
	stacked     bool
	min         *float64
	thresholds  []dashboard.Threshold // stat panels: colour steps
	queries     []query
}

type rowSpec struct {
	title  string
	panels []panelSpec
}

func q(expr, legend string) query { return query{expr: expr, legend: legend} }

func zero() *float64 { return cog.ToPtr(0.0) }

// steps builds stat colour thresholds: base colour, then (value, colour) pairs.
func steps(base string, pairs ...any) []dashboard.Threshold {
	out := []dashboard.Threshold{{Color: base}}
	for i := 0; i+1 < len(pairs); i += 2 {
		v := pairs[i].(float64)
		out = append(out, dashboard.Threshold{Value: &v, Color: pairs[i+1].(string)})
	}
	return out
}

func quantiles(metric, by, legendPrefix string) []query {
	group := "le"
	if by != "" {
		group = by + ", le"
	}
	return []query{
		q(fmt.Sprintf("histogram_quantile(0.5, sum by (%s) (rate(%s_bucket%s)))", group, metric, rate), legendPrefix+"p50"),
		q(fmt.Sprintf("histogram_quantile(0.99, sum by (%s) (rate(%s_bucket%s)))", group, metric, rate), legendPrefix+"p99"),
	}
}

func sumRate(metric, by, legend string) query {
	if by == "" {
		return q(fmt.Sprintf("sum(rate(%s%s))", metric, rate), legend)
	}
	return q(fmt.Sprintf("sum by (%s) (rate(%s%s))", by, metric, rate), legend)
}

// rows is the dashboard's content: RED (rate, errors, duration) for the ingest
// and reply paths, USE (utilisation, saturation, errors) for the fleet, Vault
// and the token cache.
func rows() []rowSpec {
	return []rowSpec{
		{title: "Service level objectives", panels: []panelSpec{
			{kind: singleStat, title: "Ingest SLO, last hour", width: 6, unit: "percentunit",
				description: "Updates handed off durably to Temporal within 1 s (the first histogram bound above 1 s), permanent handoff failures counted as bad. Objective 99.9%.",
				thresholds:  steps("red", 0.999, "green"),
				queries:     []query{q("1 - agentrunner:ingest_slo_errors:ratio_rate1h", "ingest")}},
			{kind: singleStat, title: "Reply SLO, last hour", width: 6, unit: "percentunit",
				description: "Replies sent within 5 s of the update's receipt, out of replies, agent failures and reply sends Buko refused (user-caused 403s BOT_BLOCKED and CHAT_FORBIDDEN excluded). Objective 99%.",
				thresholds:  steps("red", 0.99, "green"),
				queries:     []query{q("1 - agentrunner:reply_slo_errors:ratio_rate1h", "reply")}},
			{title: "Ingest error budget burn rate", width: 6, unit: "short", min: zero(),
				description: "Error ratio over the budget (0.1%): 1 spends the 30-day budget in 30 days. Pages above 14.4 (1h and 5m) or 6 (6h and 30m).",
				queries: []query{
					q("agentrunner:ingest_slo_errors:ratio_rate5m / 0.001", "5m"),
					q("agentrunner:ingest_slo_errors:ratio_rate1h / 0.001", "1h"),
					q("agentrunner:ingest_slo_errors:ratio_rate6h / 0.001", "6h"),
				}},
			{title: "Reply error budget burn rate", width: 6, unit: "short", min: zero(),
				description: "Error ratio over the budget (1%). Pages above 14.4 (1h and 5m) or 6 (6h and 30m).",
				queries: []query{
					q("agentrunner:reply_slo_errors:ratio_rate5m / 0.01", "5m"),
					q("agentrunner:reply_slo_errors:ratio_rate1h / 0.01", "1h"),
					q("agentrunner:reply_slo_errors:ratio_rate6h / 0.01", "6h"),
				}},
		}},
		{title: "Fleet: replicas, shards, leases", panels: []panelSpec{
			{kind: singleStat, title: "Targets up", width: 3, unit: "short",
				queries: []query{q("sum(up"+jobs+")", "up")}},
			{kind: singleStat, title: "Live runners", width: 3, unit: "short",
				description: "Live, non-draining replicas as the replicas see them in the runners table.",
				thresholds:  steps("red", 1.0, "green"),
				queries:     []query{q("max(agentrunner_runner_live_runners)", "live")}},
			{kind: singleStat, title: "Shards held", width: 3, unit: "short",
				queries: []query{q("sum(agentrunner_runner_leases_held)", "shards")}},
			{kind: singleStat, title: "Bot sessions", width: 3, unit: "short",
				queries: []query{q("sum(agentrunner_runner_sessions)", "sessions")}},
			{kind: singleStat, title: "Shards unowned", width: 3, unit: "short",
				description: "Shards in the install no replica holds: their bots have no session.",
				thresholds:  steps("green", 1.0, "red"),
				queries:     []query{q("max(agentrunner_runner_shards) - sum(agentrunner_runner_leases_held)", "unowned")}},
			{kind: singleStat, title: "Active bots without a session", width: 3, unit: "short",
				description: "Active bots in the held shards minus the sessions running, over all replicas.",
				thresholds:  steps("green", 1.0, "orange"),
				queries:     []query{q("sum(agentrunner_runner_active_bots) - sum(agentrunner_runner_sessions)", "without session")}},
			{kind: singleStat, title: "Sessions not live", width: 3, unit: "short",
				description: "Sessions connecting, backing off or failing auth: their bots receive nothing.",
				thresholds:  steps("green", 1.0, "orange"),
				queries:     []query{q(`sum(agentrunner_sessions_sessions{state=~"connecting|backoff|auth_failed"})`, "not live")}},
			{kind: singleStat, title: "Self-fencing, last 24 h", width: 3, unit: "short",
				thresholds: steps("green", 1.0, "red"),
				queries:    []query{q("sum(increase(agentrunner_runner_self_fencing_total[1d]))", "self-fencing")}},
			{title: "Shards held per replica", width: 8, unit: "short", min: zero(),
				queries: []query{q("sum by (instance) (agentrunner_runner_leases_held)", "{{instance}}")}},
			{title: "Active bots and sessions per replica", width: 8, unit: "short", min: zero(),
				queries: []query{
					q("sum by (instance) (agentrunner_runner_active_bots)", "active bots {{instance}}"),
					q("sum by (instance) (agentrunner_runner_sessions)", "sessions {{instance}}"),
				}},
			{title: "Shard claims (epoch bumps) and losses", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_runner_epoch_changes_total", "kind", "claimed {{kind}}"),
					sumRate("agentrunner_runner_leases_lost_total", "reason", "lost {{reason}}"),
				}},
			{title: "Lease renew latency", width: 8, unit: "s", min: zero(),
				queries: quantiles("agentrunner_runner_lease_renew_seconds", "", "")},
			{title: "Lease renew failures, self-fencing, fenced writes", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_runner_lease_renew_failures_total", "instance", "renew failures {{instance}}"),
					sumRate("agentrunner_runner_self_fencing_total", "instance", "self-fencing {{instance}}"),
					sumRate("agentrunner_runner_fenced_writes_total", "instance", "fenced writes {{instance}}"),
				}},
			{title: "Sessions started and stopped", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_runner_sessions_started_total", "", "started"),
					sumRate("agentrunner_runner_sessions_stopped_total", "reason", "stopped {{reason}}"),
				}},
			{title: "Reconcile passes", width: 8, unit: "ops", min: zero(),
				queries: []query{sumRate("agentrunner_runner_reconcile_passes_total", "kind", "{{kind}}")}},
			{title: "CPU per replica", width: 8, unit: "short", min: zero(),
				description: "CPU seconds per second (cores).",
				queries:     []query{q("sum by (instance) (rate(process_cpu_seconds_total"+jobs+rate+"))", "{{instance}}")}},
			{title: "Resident memory per replica", width: 8, unit: "bytes", min: zero(),
				queries: []query{q("sum by (instance) (process_resident_memory_bytes"+jobs+")", "{{instance}}")}},
			{title: "Goroutines per replica", width: 8, unit: "short", min: zero(),
				queries: []query{q("sum by (instance) (go_goroutines"+jobs+")", "{{instance}}")}},
		}},
		{title: "Sessions and ingest", panels: []panelSpec{
			{title: "Sessions by state", width: 8, unit: "short", min: zero(), stacked: true,
				queries: []query{q("sum by (state) (agentrunner_sessions_sessions)", "{{state}}")}},
			{title: "Reconnects by cause", width: 8, unit: "ops", min: zero(),
				queries: []query{sumRate("agentrunner_sessions_reconnects_total", "cause", "{{cause}}")}},
			{title: "Updates received, handed off, deduplicated, acked", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_sessions_updates_received_total", "", "received"),
					sumRate("agentrunner_sessions_handoff_duration_seconds_count", "", "handed off"),
					sumRate("agentrunner_sessions_duplicates_dropped_total", "", "duplicates dropped (session)"),
					sumRate("agentrunner_workflows_duplicate_updates_total", "", "duplicates dropped (workflow)"),
					sumRate("agentrunner_sessions_acks_sent_total", "", "acks sent"),
				}},
			{title: "Handoff latency", width: 8, unit: "s", min: zero(),
				description: "Per update, from the start of its handoff to success, retries included; and one SignalWithStart call.",
				queries: append(quantiles("agentrunner_sessions_handoff_duration_seconds", "", "update "),
					quantiles("agentrunner_workflows_handoff_duration_seconds", "", "SignalWithStart ")...)},
			{title: "Ack lag", width: 8, unit: "s", min: zero(),
				description: "Per ack: time since receipt of the oldest update it newly covers.",
				queries:     quantiles("agentrunner_sessions_ack_lag_seconds", "", "")},
			{title: "Pending updates and back-pressure", width: 8, unit: "short", min: zero(),
				queries: []query{
					q("sum(agentrunner_sessions_pending_updates)", "pending updates"),
					sumRate("agentrunner_sessions_backpressure_pauses_total", "", "back-pressure pauses/s"),
				}},
			{title: "Handoff errors", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_sessions_handoff_errors_total", "kind", "session {{kind}}"),
					q(`sum by (result) (rate(agentrunner_workflows_handoffs_total{result!="ok"}`+rate+"))", "temporal {{result}}"),
					sumRate("agentrunner_runner_pg_handoffs_total", "result", "postgres {{result}}"),
				}},
			{title: "Auth failures and polling", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_sessions_auth_failures_total", "", "401s"),
					sumRate("agentrunner_sessions_poll_errors_total", "cause", "getUpdates {{cause}}"),
					sumRate("agentrunner_sessions_polling_fallbacks_total", "", "fallbacks to polling"),
				}},
			{title: "Gateway frames by type", width: 8, unit: "ops", min: zero(),
				queries: []query{sumRate("agentrunner_sessions_frames_received_total", "type", "{{type}}")}},
		}},
		{title: "Replies: Temporal workflows and activities", panels: []panelSpec{
			{title: "Chat workflows: updates processed and failed", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_workflows_updates_processed_total", "", "processed"),
					sumRate("agentrunner_workflows_agent_failures_total", "", "agent failed"),
					sumRate("agentrunner_workflows_action_failures_total", "", "reply action failed"),
				}},
			{title: "Reply latency (receipt to first reply)", width: 8, unit: "s", min: zero(),
				description: "From the session's receipt of an update to the first message, photo or document sent for it. SLO: 99% within 5 s.",
				queries: append(quantiles("agentrunner_workflows_reply_latency_seconds", "", ""),
					q(`sum(rate(agentrunner_workflows_reply_latency_seconds_bucket{le="5"}`+rate+")) / sum(rate(agentrunner_workflows_reply_latency_seconds_count"+rate+"))", "within 5 s (ratio)"))},
			{title: "Bot API calls by method and result", width: 8, unit: "ops", min: zero(),
				queries: []query{sumRate("agentrunner_workflows_bot_api_calls_total", "method, result", "{{method}} {{result}}")}},
			{title: "Bot API outcomes by method and code", width: 8, unit: "ops", min: zero(), stacked: true,
				description: "code: ok, a Bot API error code (BOT_BLOCKED and CHAT_FORBIDDEN are the user's doing), network, or other.",
				queries:     []query{sumRate("agentrunner_workflows_bot_api_calls_total", "method, code", "{{method}} {{code}}")}},
			{title: "429s (rate limited)", width: 8, unit: "ops", min: zero(),
				queries: []query{
					q(`sum by (method) (rate(agentrunner_workflows_bot_api_calls_total{result="rate_limited"}`+rate+"))", "{{method}}"),
					q(`sum(rate(agentrunner_sessions_reconnects_total{cause="rate_limited"}`+rate+"))", "gateway upgrade"),
					q(`sum(rate(agentrunner_sessions_poll_errors_total{cause="rate_limited"}`+rate+"))", "getUpdates"),
				}},
			{title: "Bot API latency by method", width: 8, unit: "s", min: zero(),
				queries: quantiles("agentrunner_workflows_bot_api_call_duration_seconds", "method", "{{method}} ")},
			{title: "Agent attempts by agent and result", width: 8, unit: "ops", min: zero(),
				queries: []query{sumRate("agentrunner_workflows_agent_calls_total", "agent, result", "{{agent}} {{result}}")}},
			{title: "Agent latency by agent", width: 8, unit: "s", min: zero(),
				queries: quantiles("agentrunner_workflows_agent_duration_seconds", "agent", "{{agent}} ")},
			{title: "Temporal handoffs (SignalWithStart) by result", width: 8, unit: "ops", min: zero(),
				queries: []query{sumRate("agentrunner_workflows_handoffs_total", "result", "{{result}}")}},
			{title: "Quotas and per-bot concurrency", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_workflows_quota_waits_total", "", "waited for quota"),
					sumRate("agentrunner_workflows_quota_deferrals_total", "", "deferred to Temporal"),
					sumRate("agentrunner_workflows_bot_busy_total", "", "bot busy"),
				}},
			{title: "Chat workflow lifecycle", width: 8, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_workflows_continue_as_new_total", "", "continue-as-new"),
					sumRate("agentrunner_workflows_idle_ended_total", "", "ended idle"),
				}},
		}},
		{title: "Temporal SDK (worker and client)", panels: []panelSpec{
			{title: "Workflow task schedule-to-start latency", width: 8, unit: "s", min: zero(),
				description: "Time workflow tasks wait in the task queue for a worker: grows when workers are too few or saturated.",
				queries:     quantiles("agentrunner_temporal_workflow_task_schedule_to_start_latency_seconds", "task_queue", "{{task_queue}} ")},
			{title: "Activity schedule-to-start latency", width: 8, unit: "s", min: zero(),
				description: "Time activity tasks (agent runs, Bot API sends) wait in the task queue for a worker slot.",
				queries:     quantiles("agentrunner_temporal_activity_schedule_to_start_latency_seconds", "task_queue", "{{task_queue}} ")},
			{title: "Poll and request errors", width: 8, unit: "ops", min: zero(),
				description: "Failed long polls (PollWorkflowTaskQueue, PollActivityTaskQueue) and other failed Temporal calls, by operation and gRPC status.",
				queries: []query{
					sumRate("agentrunner_temporal_long_request_failure_total", "operation, status_code", "poll {{operation}} {{status_code}}"),
					sumRate("agentrunner_temporal_request_failure_total", "operation, status_code", "{{operation}} {{status_code}}"),
				}},
			{title: "Worker task slots available", width: 8, unit: "short", min: zero(),
				queries: []query{q("sum by (instance, worker_type) (agentrunner_temporal_worker_task_slots_available)", "{{instance}} {{worker_type}}")}},
		}},
		{title: "Vault and tokens", panels: []panelSpec{
			{kind: singleStat, title: "Token cache hit ratio, last hour", width: 6, unit: "percentunit",
				queries: []query{q("sum(rate(agentrunner_vault_cache_hits_total[1h])) / (sum(rate(agentrunner_vault_cache_hits_total[1h])) + sum(rate(agentrunner_vault_cache_misses_total[1h])))", "hit ratio")}},
			{title: "Token cache lookups", width: 6, unit: "ops", min: zero(),
				queries: []query{
					sumRate("agentrunner_vault_cache_hits_total", "", "hits"),
					sumRate("agentrunner_vault_cache_misses_total", "", "misses"),
					sumRate("agentrunner_vault_cache_invalidations_total", "", "invalidations"),
				}},
			{title: "Cached tokens per replica", width: 6, unit: "short", min: zero(),
				queries: []query{q("sum by (instance) (agentrunner_vault_cache_tokens)", "{{instance}}")}},
			{title: "Token batch load (decrypt at claim)", width: 6, unit: "s", min: zero(),
				queries: quantiles("agentrunner_runner_token_batch_seconds", "", "")},
			{title: "Vault Transit requests by op and result", width: 8, unit: "ops", min: zero(),
				queries: []query{sumRate("agentrunner_vault_transit_requests_total", "op, result", "{{op}} {{result}}")}},
			{title: "Vault Transit latency by op", width: 8, unit: "s", min: zero(),
				queries: quantiles("agentrunner_vault_transit_request_duration_seconds", "op", "{{op}} ")},
			{title: "Cipher errors, logins, token renewals", width: 8, unit: "ops", min: zero(),
				queries: []query{
					q(`sum by (cipher, op) (rate(agentrunner_vault_cipher_items_total{result="error"}`+rate+"))", "{{cipher}} {{op}} errors"),
					sumRate("agentrunner_vault_logins_total", "method, result", "login {{method}} {{result}}"),
					sumRate("agentrunner_vault_token_renewals_total", "result", "renewal {{result}}"),
					sumRate("agentrunner_vault_rewrapped_rows_total", "", "rows rewrapped"),
				}},
		}},
	}
}

// Dashboard builds the agentrunner Grafana dashboard.
func Dashboard() (dashboard.Dashboard, error) {
	ds := common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}
	b := dashboard.NewDashboardBuilder("agentrunner").
		Uid(DashboardUID).
		Description("agentrunner: Bot Gateway sessions, handoff to Temporal, replies, shard leases, Vault. Generated by buko.app/agentrunner/deploy; do not edit the JSON by hand.").
		Tags([]string{"agentrunner"}).
		Refresh("30s").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Readonly().
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").
			Label("Data source").
			Type("prometheus"))
	var id uint32
	for _, r := range rows() {
		id++
		b = b.WithRow(dashboard.NewRowBuilder(r.title).Id(id))
		for _, p := range r.panels {
			id++
			b = b.WithPanel(build(p, id, ds))
		}
	}
	d, err := b.Build()
	if err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("build dashboard: %w", err)
	}
	return d, nil
}

// DashboardJSON renders [Dashboard] as the bytes committed in DashboardFile.
func DashboardJSON() ([]byte, error) {
	d, err := Dashboard()
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode dashboard: %w", err)
	}
	return append(out, '\n'), nil
}

func targets(qs []query) []cog.Builder[variants.Dataquery] {
	out := make([]cog.Builder[variants.Dataquery], 0, len(qs))
	for i, qq := range qs {
		out = append(out, prometheus.NewDataqueryBuilder().
			RefId(string(rune('A'+i))).
			Expr(qq.expr).
			LegendFormat(qq.legend))
	}
	return out
}

func build(p panelSpec, id uint32, ds common.DataSourceRef) cog.Builder[dashboard.Panel] {
	const height = 8
	switch p.kind {
	case singleStat:
		b := stat.NewPanelBuilder().
			Id(id).
			Title(p.title).
			Datasource(ds).
			Unit(p.unit).
			Height(height).
			Span(p.width).
			GraphMode(common.BigValueGraphModeArea).
			ColorMode(common.BigValueColorModeValue).
			ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"})).
			Targets(targets(p.queries))
		if p.description != "" {
			b = b.Description(p.description)
		}
		if len(p.thresholds) > 0 {
			b = b.Thresholds(dashboard.NewThresholdsConfigBuilder().
				Mode(dashboard.ThresholdsModeAbsolute).
				Steps(p.thresholds))
		}
		return b
	default:
		b := timeseries.NewPanelBuilder().
			Id(id).
			Title(p.title).
			Datasource(ds).
			Unit(p.unit).
			Height(height).
			Span(p.width).
			LineWidth(1).
			FillOpacity(10).
			ShowPoints(common.VisibilityModeNever).
			Legend(common.NewVizLegendOptionsBuilder().
				ShowLegend(true).
				DisplayMode(common.LegendDisplayModeList).
				Placement(common.LegendPlacementBottom)).
			Tooltip(common.NewVizTooltipOptionsBuilder().
				Mode(common.TooltipDisplayModeMulti).
				Sort(common.SortOrderDescending)).
			Targets(targets(p.queries))
		if p.description != "" {
			b = b.Description(p.description)
		}
		if p.min != nil {
			b = b.Min(*p.min)
		}
		if p.stacked {
			b = b.Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal)).FillOpacity(60)
		}
		return b
	}
}
