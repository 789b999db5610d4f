package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "buko.app/agentrunner"

// allowed lists, for each room (a top-level package and its subpackages),
// the other rooms its non-test files may import. Within a room any import
// is fine (Go refuses cycles). A room missing here fails the test, so a new
// top-level package needs a line: that is where its place in the graph is
// decided. The direction is docs/architecture.md §2:
// cmd → runner → sessions, workflows, vault → buko, with permanent (the
// one error marker) and httpapi (the one HTTP handler style) below them all.
// bench (load measured from outside, through the simulator) and devstack
// (the local dev stack) hold cmd's logic: just below cmd, above the rest.
var allowed = map[string][]string{
	"cmd":        {"bench", "devstack", "soak", "runner", "sessions", "workflows", "vault", "buko", "migrations", "permanent", "httpapi"},
	"bench":      {"runner", "sessions", "workflows", "vault", "buko", "migrations", "permanent", "httpapi"},
	"devstack":   {"runner", "sessions", "workflows", "vault", "buko", "migrations", "permanent", "httpapi"},
	"soak":       {"runner", "sessions", "workflows", "vault", "buko", "migrations", "permanent", "httpapi"},
	"runner":     {"sessions", "workflows", "vault", "buko", "migrations", "permanent", "httpapi"},
	"sessions":   {"buko", "permanent"},
	"workflows":  {"vault", "buko", "permanent"},
	"vault":      {"buko", "permanent"},
	"buko":       {"permanent", "httpapi"},
	"migrations": {},
	"permanent":  {},
	"httpapi":    {},
	"deploy":     {},
	"helm":       {},
	// Test support sits beside production code; what it may import is
	// checked like any room, what may import it is testSupport's rule.
	"internal/testsupport": {"runner", "sessions", "workflows", "vault", "buko", "migrations", "permanent"},
	"internal/archtest":    {},
}

// testSupport are the packages (and their subpackages) that exist for tests:
// only _test.go files and other test-support packages may import them.
var testSupport = []string{
	"deploy", // its Go code generates and checks the dashboards and rules in tests; nothing ships it
	"migrations/pgtest",
	"runner/runnertest",
	"buko/sim/web/browser",
	"internal/testsupport",
}

type pkg struct {
	ImportPath string
	Imports    []string // of the non-test files
	Error      *struct{ Err string }
}

// packages lists every package of the module with its production imports.
func packages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "go", "list", "-e", "-json=ImportPath,Imports,Error", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list: %v", err)
		}
		if p.Error != nil {
			t.Errorf("%s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found %d packages of %s; run from inside the module", len(pkgs), module)
	}
	return pkgs
}

// rel is path inside the module, or "" for a package outside it.
func rel(path string) string {
	if path == module {
		return "."
	}
	if r, ok := strings.CutPrefix(path, module+"/"); ok {
		return r
	}
	return ""
}

// under reports whether path is prefix or a package below it.
func under(path, prefix string) bool {
	return path == prefix || strings.HasPrefix(path, prefix+"/")
}

// room is the part of the graph path belongs to: its first element, or
// internal/<name> for internal packages.
func room(path string) string {
	parts := strings.Split(path, "/")
	if parts[0] == "internal" && len(parts) > 1 {
		return "internal/" + parts[1]
	}
	return parts[0]
}

func isTestSupport(path string) bool {
	return slices.ContainsFunc(testSupport, func(p string) bool { return under(path, p) })
}

// violations is the rule itself, apart from go list, so that it can be
// checked against a graph that breaks it.
func violations(pkgs []pkg) []string {
	var out []string
	for _, p := range pkgs {
		from := rel(p.ImportPath)
		if from == "" {
			continue
		}
		ok, known := allowed[room(from)]
		if !known {
			out = append(out, from+": room "+room(from)+" has no place in the import graph (add it to allowed)")
			continue
		}
		for _, imp := range p.Imports {
			to := rel(imp)
			if to == "" {
				continue // standard library or a dependency
			}
			if isTestSupport(to) && !isTestSupport(from) {
				out = append(out, from+" imports test-support package "+to+" in non-test code")
				continue
			}
			if room(to) == room(from) || slices.Contains(ok, room(to)) {
				continue
			}
			if isTestSupport(from) && isTestSupport(to) {
				continue // test support builds on test support, whatever its room
			}
			out = append(out, from+" imports "+to+": "+room(from)+" may import only "+strings.Join(ok, ", "))
		}
	}
	return out
}

// TestImportDirection fails when a package imports against the direction
// cmd → runner → sessions, workflows, vault → buko, or when production code
// imports a test-support package.
func TestImportDirection(t *testing.T) {
	for _, v := range violations(packages(t)) {
		t.Error(v)
	}
}

// TestViolationsCatchesForbiddenImports checks the rule on a made-up graph,
// so that a rule that accepts everything cannot pass unnoticed.
func TestViolationsCatchesForbiddenImports(t *testing.T) {
	m := func(s string) string { return module + "/" + s }
	graph := []pkg{
		{ImportPath: m("buko"), Imports: []string{"fmt", m("sessions")}},                      // upward
		{ImportPath: m("sessions"), Imports: []string{m("vault")}},                            // sideways
		{ImportPath: m("vault"), Imports: []string{m("migrations/pgtest")}},                   // test support
		{ImportPath: m("runner/runnertest"), Imports: []string{m("migrations/pgtest")}},       // fine
		{ImportPath: m("workflows"), Imports: []string{m("workflows/agents"), m("vault")}},    // fine
		{ImportPath: m("cmd/agentrunner"), Imports: []string{m("internal/testsupport/wait")}}, // test support
		{ImportPath: m("newroom"), Imports: nil},                                              // unplaced
	}
	got := violations(graph)
	want := []string{"buko imports sessions", "sessions imports vault", "vault imports test-support", "cmd/agentrunner imports test-support", "newroom: room"}
	if len(got) != len(want) {
		t.Fatalf("violations:\n%s\nwant %d", strings.Join(got, "\n"), len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("violation %d = %q, want prefix %q", i, got[i], w)
		}
	}
}
