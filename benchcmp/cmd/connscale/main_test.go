package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// ants/v2, which v4 runs its methods on, starts its package-level default
// pool (two goroutines) when it is imported: the one thing rpcsteps accepts
// being started at import time. IgnoreCurrent ignores exactly the
// goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

// v3 spends two goroutines per idle connection, v4 none; the output says so
// in both forms.
func TestConnScale(t *testing.T) {
	var out strings.Builder
	file := filepath.Join(t.TempDir(), "scale.txt")
	require.NoError(t, run(&out, "v3,v4", "50", file))
	require.Contains(t, out.String(), "v3         50 connections:   2.00 goroutines")
	// v4: none per connection; a worker of the pool may still be alive
	// (they leave after a second idle), which is 0.02 per connection of 50.
	var perConn float64
	_, err := fmt.Sscanf(out.String()[strings.Index(out.String(), "v4 "):], "v4 50 connections: %f goroutines", &perConn)
	require.NoError(t, err)
	require.Less(t, perConn, 0.1)
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Contains(t, string(b), "BenchmarkConnScale/impl=v4/conns=50-")

	require.Error(t, run(&out, "v9", "50", ""))
	require.Error(t, run(&out, "v4", "0", ""))
}
