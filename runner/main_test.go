package runner

import (
	"testing"

	"buko.app/agentrunner/internal/testsupport"
)

// TestMain fails the run when a test leaves a goroutine behind.
func TestMain(m *testing.M) { testsupport.Main(m) }
