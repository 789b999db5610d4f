// Package testsupport is what agentrunner's tests share: the one rule for a
// service a test needs (skip on a developer machine, fail under CI, with one
// meaning of CI: see [CI]), waits for conditions and channels whose timeouts
// grow under CI, random ids, the resident set size of a process, and
// goroutine-leak checking from TestMain ([Main]).
//
// Only tests and test-support packages (migrations/pgtest,
// runner/runnertest, buko/sim/web/browser, deploy's promtool lookup) import
// it; production code never does.
package testsupport
