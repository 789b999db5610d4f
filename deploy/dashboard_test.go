package deploy

//lint:file-ignore SA1019 The chart ships the classic dashboard JSON (schema v1, package dashboard), which every Grafana the chart supports imports; the SDK's dashboardv2 is a different schema for Grafana 12's v2 API, a change of what we ship, not a rename.

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

var update = flag.Bool("update", false, "rewrite deploy/grafana/agentrunner.json from the Go code")

// TestDashboardIsGenerated: the committed JSON is exactly what DashboardJSON
// generates (run with -update to rewrite it).
func TestDashboardIsGenerated(t *testing.T) {
	want, err := DashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.MkdirAll(filepath.Dir(DashboardFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(DashboardFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes); now run deploy/dev/sync-chart-files.sh", DashboardFile, len(want))
	}
	got, err := os.ReadFile(DashboardFile)
	if err != nil {
		t.Fatalf("%v: run go test ./deploy -run TestDashboardIsGenerated -update", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the generated dashboard: run go test ./deploy -run TestDashboardIsGenerated -update", DashboardFile)
	}
}

// Just what the checks read of the committed JSON.
type dashJSON struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ H, W, X, Y int } `json:"gridPos"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
}

func readDashboard(t *testing.T) (dashJSON, []byte) {
	t.Helper()
	raw, err := os.ReadFile(DashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashJSON
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", DashboardFile, err)
	}
	return d, raw
}

// TestDashboardQueriesReferenceExportedMetrics decodes the committed dashboard
// and checks every panel query names metrics the binary exports (or the rules
// record), with labels they have.
func TestDashboardQueriesReferenceExportedMetrics(t *testing.T) {
	fams := exported(t)
	recorded := recordedNames(allRules(t))
	d, _ := readDashboard(t)
	queries := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			for _, err := range checkExpr(fams, recorded, tg.Expr) {
				t.Errorf("panel %q, query %s (%s): %v", p.Title, tg.RefID, tg.Expr, err)
			}
		}
	}
	if queries < 50 {
		t.Errorf("only %d queries on the dashboard", queries)
	}
	t.Logf("%d panels, %d queries checked", len(d.Panels), queries)
}

// TestDashboardCoversTheMetrics lists the agentrunner metrics no panel shows,
// so a new metric gets a panel. It only reports them: the packages that add
// metrics are not this one, and a new metric must not break their builds.
func TestDashboardCoversTheMetrics(t *testing.T) {
	fams := exported(t)
	d, _ := readDashboard(t)
	shown := map[string]bool{}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			refs, _, err := promqlRefs(tg.Expr)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range refs {
				if s, ok := resolve(fams, r.name); ok {
					shown[s.fam.name] = true
				}
			}
		}
	}
	// Series the SLO recording rules stand for on the dashboard.
	for _, r := range allRules(t) {
		if r.Record == "" {
			continue
		}
		refs, _, _ := promqlRefs(r.Expr)
		for _, ref := range refs {
			if s, ok := resolve(fams, ref.name); ok {
				shown[s.fam.name] = true
			}
		}
	}
	var missing []string
	for name, f := range fams {
		if f.pkg != "" && !shown[name] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Logf("NOTE: %d metrics are on no dashboard panel (add them in deploy/dashboard.go): %s", len(missing), strings.Join(missing, ", "))
	}
}

// TestDashboardShape: the layout and wiring Grafana needs.
func TestDashboardShape(t *testing.T) {
	d, raw := readDashboard(t)
	if d.UID != DashboardUID || d.Title == "" {
		t.Errorf("uid %q title %q", d.UID, d.Title)
	}
	if len(d.Templating.List) == 0 || d.Templating.List[0].Name != "datasource" || d.Templating.List[0].Type != "datasource" {
		t.Errorf("want a datasource variable first, got %+v", d.Templating.List)
	}
	ids := map[int]bool{}
	rows := 0
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d is zero or not unique", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: bad gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			rows++
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		for _, tg := range p.Targets {
			if strings.Contains(tg.Expr, "rate(") && strings.Contains(tg.Expr, "[5m]") {
				t.Errorf("panel %q: use [$__rate_interval], not a fixed [5m]: %s", p.Title, tg.Expr)
			}
		}
	}
	if rows < 4 {
		t.Errorf("%d rows, want the SLO, fleet, sessions, replies and Vault rows", rows)
	}
	// The SDK's own decoding accepts it. Its strict mode returns an empty,
	// non-nil error value on success, so only a non-empty message fails.
	var sdk dashboard.Dashboard
	if err := sdk.UnmarshalJSONStrict(raw); err != nil && err.Error() != "" {
		t.Errorf("the SDK's strict decoding rejects the dashboard: %v", err)
	}
	if sdk.Uid == nil || *sdk.Uid != DashboardUID {
		t.Errorf("SDK decoding lost the uid")
	}
}
