package main

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// binaryEnv lists every environment variable some flag of the binary reads.
func binaryEnv(t *testing.T) map[string]bool {
	t.Helper()
	env := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		visit := func(fl *pflag.Flag) {
			for _, e := range fl.Annotations[envAnnotation] {
				env[e] = true
			}
		}
		c.Flags().VisitAll(visit)
		c.PersistentFlags().VisitAll(visit)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(newRootCmd())
	return env
}

// Every variable the Helm chart sets must be one the binary reads, or the
// setting silently does nothing in production.
func TestChartSetsOnlyVariablesTheBinaryReads(t *testing.T) {
	known := binaryEnv(t)
	// Read by github.com/hashicorp/vault/api itself, as the vault CLI does.
	for _, e := range []string{"VAULT_TOKEN", "VAULT_CACERT", "VAULT_NAMESPACE"} {
		known[e] = true
	}
	files, err := filepath.Glob("../../helm/agentrunner/templates/*")
	if err != nil || len(files) == 0 {
		t.Fatalf("chart templates: %v (%d files)", err, len(files))
	}
	name := regexp.MustCompile(`(?m)^\s*- name: ([A-Z][A-Z0-9_]+)\s*$`)
	seen := 0
	var unknown []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range name.FindAllSubmatch(b, -1) {
			seen++
			if !known[string(m[1])] {
				unknown = append(unknown, filepath.Base(f)+": "+string(m[1]))
			}
		}
	}
	if seen < 10 {
		t.Fatalf("found only %d env entries in the chart: the pattern no longer matches the templates", seen)
	}
	sort.Strings(unknown)
	for _, u := range unknown {
		t.Errorf("the chart sets %s, which no flag of agentrunner reads", u)
	}
}
