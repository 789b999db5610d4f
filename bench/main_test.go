package bench

import (
	"testing"

	"buko.app/agentrunner/internal/testsupport"
)

func TestMain(m *testing.M) { testsupport.Main(m) }
