package soak

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind. IgnoreCurrent:
// github.com/panjf2000/ants/v2, should a version import it, starts two
// goroutines for its default pool at program start.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }
