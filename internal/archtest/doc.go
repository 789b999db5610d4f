// Package archtest holds the test that enforces the project's package graph:
// dependencies point one way (cmd → runner → sessions, workflows, vault →
// buko) and test-support packages stay out of production code. It has no
// non-test code; see imports_test.go and docs/architecture.md §2.
package archtest
