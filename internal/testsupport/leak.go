package testsupport

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// thirdParty are the background goroutines of libraries the tests use that
// outlive every test by design and are benign; each is named by the function
// at the top of its stack. Our own goroutines are never ignored.
var thirdParty = []goleak.Option{
	// net/http keeps idle keep-alive connections (to Vault, the simulator,
	// Temporal's HTTP API) open until their idle timeout; each holds a read
	// and a write loop. A connection still in use has the same loops, so an
	// unclosed response body is not caught here (bodyclose-style review is).
	goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
	goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
}

// Main runs the package's tests (m.Run), then each of after (process-wide
// cleanups, such as dropping a Temporal namespace), and then fails the run
// when a goroutine is left behind: a leak of our code fails, only the
// [thirdParty] background goroutines are allowed. It exits the process.
func Main(m *testing.M, after ...func()) {
	code := m.Run()
	for _, f := range after {
		f()
	}
	if code == 0 {
		if err := goleak.Find(thirdParty...); err != nil {
			fmt.Fprintf(os.Stderr, "testsupport: goroutines left behind after the tests:\n%v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
