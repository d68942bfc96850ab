package epollbatch

import (
	"testing"

	"go.uber.org/goleak"
)

// ants/v2, which v4 runs its methods on, starts its package-level default
// pool (two goroutines) when it is imported: the one thing rpcsteps accepts
// being started at import time. IgnoreCurrent ignores exactly the
// goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }
