package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// v3 spends two goroutines per idle connection, v4 none; the output says so
// in both forms.
func TestConnScale(t *testing.T) {
	var out strings.Builder
	file := filepath.Join(t.TempDir(), "scale.txt")
	require.NoError(t, run(&out, "v3,v4", "50", file))
	require.Contains(t, out.String(), "v3         50 connections:   2.00 goroutines")
	require.Contains(t, out.String(), "v4         50 connections:   0.00 goroutines")
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Contains(t, string(b), "BenchmarkConnScale/impl=v4/conns=50-")

	require.Error(t, run(&out, "v9", "50", ""))
	require.Error(t, run(&out, "v4", "0", ""))
}
