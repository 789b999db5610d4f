package deploy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// runbookBase is where every alert's runbook_url points: the alert's name and
// .md follow.
const runbookBase = "https://github.com/buko/agentrunner/blob/main/deploy/runbooks/"

type rule struct {
	Record        string            `json:"record,omitempty"`
	Alert         string            `json:"alert,omitempty"`
	Expr          string            `json:"expr"`
	For           string            `json:"for,omitempty"`
	KeepFiringFor string            `json:"keep_firing_for,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type ruleFile struct {
	Groups []ruleGroup `json:"groups"`
}

// promtool's unit-test file, as far as these tests read it.
type ruleTestFile struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval,omitempty"`
	GroupEvalOrder     []string `json:"group_eval_order,omitempty"`
	Tests              []struct {
		Name          string `json:"name"`
		Interval      string `json:"interval"`
		InputSeries   []any  `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []any  `json:"exp_alerts"`
		} `json:"alert_rule_test"`
		PromqlExprTest []any `json:"promql_expr_test"`
	} `json:"tests"`
}

// ruleFiles lists the rules files of deploy/prometheus (top-level groups:),
// the same selection deploy/dev/sync-chart-files.sh ships into the chart.
func ruleFiles(t *testing.T) map[string]ruleFile {
	t.Helper()
	out := map[string]ruleFile{}
	paths, err := filepath.Glob(filepath.Join("prometheus", "*.y*ml"))
	if err != nil {
		t.Fatal(err)
	}
	groups := regexp.MustCompile(`(?m)^groups:`)
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !groups.Match(raw) {
			continue
		}
		var rf ruleFile
		if err := yaml.UnmarshalStrict(raw, &rf); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out[p] = rf
	}
	if len(out) == 0 {
		t.Fatal("no rules files in deploy/prometheus")
	}
	return out
}

func ruleTestFiles(t *testing.T) map[string]ruleTestFile {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join("prometheus", "*_test.y*ml"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]ruleTestFile{}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var tf ruleTestFile
		if err := yaml.UnmarshalStrict(raw, &tf); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out[p] = tf
	}
	if len(out) == 0 {
		t.Fatal("no promtool unit-test files (deploy/prometheus/*_test.yml)")
	}
	return out
}

type namedRule struct {
	file, group string
	rule
}

func allRules(t *testing.T) []namedRule {
	t.Helper()
	var out []namedRule
	for f, rf := range ruleFiles(t) {
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				out = append(out, namedRule{file: f, group: g.Name, rule: r})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Alert+out[i].Record < out[j].Alert+out[j].Record })
	return out
}

func recordedNames(rules []namedRule) map[string]bool {
	out := map[string]bool{}
	for _, r := range rules {
		if r.Record != "" {
			out[r.Record] = true
		}
	}
	return out
}

// checkExpr checks every metric an expression names is exported (or recorded),
// with the labels and buckets it uses.
func checkExpr(fams map[string]*family, recorded map[string]bool, expr string) []error {
	refs, grouping, err := promqlRefs(expr)
	if err != nil {
		return []error{fmt.Errorf("cannot read the expression: %w", err)}
	}
	if len(refs) == 0 {
		return []error{fmt.Errorf("names no metric")}
	}
	var errs []error
	for _, r := range refs {
		if err := checkRef(fams, recorded, r); err != nil {
			errs = append(errs, err)
		}
	}
	if err := checkGrouping(fams, refs, grouping); err != nil {
		errs = append(errs, err)
	}
	return errs
}

func TestRulesReferenceExportedMetrics(t *testing.T) {
	fams := exported(t)
	rules := allRules(t)
	recorded := recordedNames(rules)
	for _, r := range rules {
		for _, err := range checkExpr(fams, recorded, r.Expr) {
			t.Errorf("%s: %s%s: %v", r.file, r.Alert, r.Record, err)
		}
	}
}

func TestRecordingRuleNames(t *testing.T) {
	names := regexp.MustCompile(`^agentrunner:[a-z0-9_]+:[a-z0-9_]+$`)
	seen := map[string]bool{}
	for _, r := range allRules(t) {
		if r.Record == "" {
			continue
		}
		if !names.MatchString(r.Record) {
			t.Errorf("recording rule %s: want level:metric:operations, agentrunner:…:…", r.Record)
		}
		if seen[r.Record] {
			t.Errorf("recording rule %s is defined twice", r.Record)
		}
		seen[r.Record] = true
	}
}

// TestAlertsAreComplete: each alert has a severity, a summary, a description
// and a runbook_url pointing at its own runbook, which exists and has the
// sections on-call needs; each runbook belongs to an alert.
func TestAlertsAreComplete(t *testing.T) {
	alerts := map[string]bool{}
	for _, r := range allRules(t) {
		if r.Alert == "" {
			continue
		}
		if alerts[r.Alert] {
			t.Errorf("alert %s is defined twice", r.Alert)
		}
		alerts[r.Alert] = true
		if !strings.HasPrefix(r.Alert, "Agentrunner") {
			t.Errorf("alert %s: want the prefix Agentrunner", r.Alert)
		}
		switch r.Labels["severity"] {
		case "critical", "warning":
		default:
			t.Errorf("alert %s: severity %q, want critical (pages) or warning (ticket)", r.Alert, r.Labels["severity"])
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("alert %s: no %s annotation", r.Alert, a)
			}
		}
		if want := runbookBase + r.Alert + ".md"; r.Annotations["runbook_url"] != want {
			t.Errorf("alert %s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
		}
		raw, err := os.ReadFile(filepath.Join("runbooks", r.Alert+".md"))
		if err != nil {
			t.Errorf("alert %s: no runbook: %v", r.Alert, err)
			continue
		}
		text := string(raw)
		if !strings.HasPrefix(text, "# "+r.Alert+"\n") {
			t.Errorf("runbooks/%s.md: want the title line %q", r.Alert, "# "+r.Alert)
		}
		for _, section := range []string{"## Meaning", "## Impact", "## Diagnosis", "## Mitigation", "## Escalation"} {
			if !strings.Contains(text, "\n"+section+"\n") {
				t.Errorf("runbooks/%s.md: no %q section", r.Alert, section)
			}
		}
	}
	if len(alerts) == 0 {
		t.Fatal("no alerts")
	}
	books, err := filepath.Glob(filepath.Join("runbooks", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	index, err := os.ReadFile(filepath.Join("runbooks", "README.md"))
	if err != nil {
		t.Fatalf("runbooks/README.md (the index): %v", err)
	}
	for _, b := range books {
		name := strings.TrimSuffix(filepath.Base(b), ".md")
		if name == "README" {
			continue
		}
		if !alerts[name] {
			t.Errorf("runbooks/%s.md belongs to no alert", name)
		}
		if !strings.Contains(string(index), "("+name+".md)") {
			t.Errorf("runbooks/README.md does not link %s.md", name)
		}
	}
}

// TestEveryAlertIsUnitTested: the promtool tests show each alert firing and
// each alert not firing.
func TestEveryAlertIsUnitTested(t *testing.T) {
	fires, quiet := map[string]bool{}, map[string]bool{}
	covered := map[string]bool{}
	for p, tf := range ruleTestFiles(t) {
		for _, f := range tf.RuleFiles {
			covered[filepath.Join("prometheus", f)] = true
		}
		for _, tc := range tf.Tests {
			if tc.Name == "" {
				t.Errorf("%s: a test without a name", p)
			}
			for _, a := range tc.AlertRuleTest {
				if len(a.ExpAlerts) > 0 {
					fires[a.Alertname] = true
				} else {
					quiet[a.Alertname] = true
				}
			}
		}
	}
	for f := range ruleFiles(t) {
		if !covered[f] {
			t.Errorf("%s is in no promtool test file's rule_files", f)
		}
	}
	for _, r := range allRules(t) {
		if r.Alert == "" {
			continue
		}
		if !fires[r.Alert] {
			t.Errorf("no promtool test shows %s firing", r.Alert)
		}
		if !quiet[r.Alert] {
			t.Errorf("no promtool test shows %s not firing", r.Alert)
		}
	}
}

func runPromtool(t *testing.T, bin string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

func TestPromtoolCheckRules(t *testing.T) {
	bin := RequirePromtool(t)
	var files []string
	for f := range ruleFiles(t) {
		files = append(files, filepath.Base(f))
	}
	slices.Sort(files)
	runPromtool(t, bin, append([]string{"check", "rules"}, files...)...)
}

func TestPromtoolTestRules(t *testing.T) {
	bin := RequirePromtool(t)
	var files []string
	for f := range ruleTestFiles(t) {
		files = append(files, filepath.Base(f))
	}
	slices.Sort(files)
	runPromtool(t, bin, append([]string{"test", "rules"}, files...)...)
}

// TestCheckExprCatchesMistakes: the reference check rejects the mistakes it is
// there for, and accepts their correct forms.
func TestCheckExprCatchesMistakes(t *testing.T) {
	fams := exported(t)
	recorded := map[string]bool{"agentrunner:ingest_slo_errors:ratio_rate5m": true}
	bad := map[string]string{
		`rate(agentrunner_sessions_updates_recieved_total[5m])`:                           "not a metric",
		`agentrunner_runner_leases_held_bucket`:                                           "not a metric",
		`sum(agentrunner_sessions_sessions{state="lve"})`:                                 "not a value",
		`sum(agentrunner_sessions_sessions{state=~"live|polled"})`:                        "not a value",
		`sum(agentrunner_sessions_sessions{status="live"})`:                               "no label",
		`rate(agentrunner_sessions_handoff_duration_seconds_bucket{le="0.75"}[5m])`:       "no bucket",
		`sum by (reason) (rate(agentrunner_sessions_reconnects_total[5m]))`:               "groups by",
		`agentrunner:ingest_slo_errors:ratio_rate10m`:                                     "not recorded",
		`sum(rate(agentrunner_workflows_bot_api_calls_total{le="0.5"}[5m]))`:              "no label",
		`histogram_quantile(0.9, rate(agentrunner_vault_transit_requests_total_sum[5m]))`: "not a metric",
	}
	for expr, want := range bad {
		errs := checkExpr(fams, recorded, expr)
		if len(errs) == 0 || !strings.Contains(fmt.Sprint(errs), want) {
			t.Errorf("%s: got %v, want an error containing %q", expr, errs, want)
		}
	}
	for _, good := range []string{
		`sum by (state, instance) (agentrunner_sessions_sessions{state=~"live|polling"})`,
		`histogram_quantile(0.99, sum by (le) (rate(agentrunner_sessions_handoff_duration_seconds_bucket{le="+Inf"}[5m])))`,
		`rate(agentrunner_vault_transit_request_duration_seconds_sum[5m]) / rate(agentrunner_vault_transit_request_duration_seconds_count[5m])`,
		`sum by (cause) (rate(agentrunner_sessions_reconnects_total{cause="whatever"}[5m]))`,
		`1 - agentrunner:ingest_slo_errors:ratio_rate5m`,
		`up{job=~".*agentrunner.*"} == 0`,
	} {
		if errs := checkExpr(fams, recorded, good); len(errs) > 0 {
			t.Errorf("%s: %v", good, errs)
		}
	}
}
