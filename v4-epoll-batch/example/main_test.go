package main

import (
	"bytes"
	"regexp"
	"runtime"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// ants/v2, which v4 runs its methods on, starts its package-level default
// pool (two goroutines) when it is imported: the one thing rpcsteps accepts
// being started at import time. IgnoreCurrent ignores exactly the
// goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

// The demo prints what the chapter (../README.md) says it prints. The
// figures that move between runs are matched by their form; the counts
// are checked: v4 holds its idle connections with no goroutine each, v3
// with two, and both shut down cleanly.
func TestDemoOutput(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(&out, config{conns: 500, callers: 64, calls: 640}))
	t.Log("\n" + out.String())

	servers := `v4 server listening on 127\.0\.0\.1:\d+ \((?:epoll reactors, a pool of workers|its portable engine: no epoll on \w+)\)
v3 server listening on 127\.0\.0\.1:\d+ \(a reader and a writer goroutine per connection\)
`
	calls := `v4 client \(codec\.Raw\), 64 callers, 640 calls: \S+, \d+ calls/s \(in-process: client and server share this machine's \d+ cores; it moves between runs\)
  client Stats: 1 connection, 1 dialed, 0 pending; 640 requests in \d+ (?:writev|writes): \d+\.\d per write
  server Stats: 1 connection, 0 in flight; 640 replies in \d+ (?:writev|writes): \d+\.\d per write; \d+ workers busy, \d+ alive, 0 overloaded
`
	shutdown := `v4 Shutdown: <nil> \(Serve returned "rpc: server closed"\); then 0 connections, (\d+) replies written in all \((\d+) idle \+ 640 calls\)
v3 Shutdown: <nil> \(Serve returned "rpc: server closed"\); then 0 connections, (\d+) replies written in all \((\d+) idle\)
`
	if runtime.GOOS != "linux" {
		want := servers + `idle connections: skipped on \w+: v4's epoll reactors are Linux's; .*
` + calls + shutdown
		m := regexp.MustCompile("^" + want + "$").FindStringSubmatch(out.String())
		require.NotNil(t, m, "the output does not have the chapter's form")
		require.Equal(t, []string{"640", "0", "0", "0"}, m[1:])
		return
	}

	want := servers + `open files \(RLIMIT_NOFILE, raised by Go at start towards the hard limit\): soft limit \d+, hard limit (?:\d+|unlimited), \d+ open
(500 connections need 1000 descriptors \(both ends are in this process\), more than the limit leaves: lowered to \d+ per server \(raise the hard limit, e\.g\. ulimit -Hn, for more\)
)?v4: (\d+) idle connections, raw TCP, one Echo call each
  before: \d+ goroutines, Stats\(\)\.Conns 0, Stats\(\)\.Workers 0
  after:  \d+ goroutines, Stats\(\)\.Conns (\d+), Stats\(\)\.Workers \d+
  goroutines per connection: (-?\d+\.\d\d)
  closed: \d+ goroutines, Stats\(\)\.Conns 0
v3: (\d+) idle connections, raw TCP, one Echo call each
  before: \d+ goroutines, Stats\(\)\.Conns 0
  after:  \d+ goroutines, Stats\(\)\.Conns (\d+)
  goroutines per connection: (-?\d+\.\d\d)
  closed: \d+ goroutines, Stats\(\)\.Conns 0
` + calls + shutdown
	m := regexp.MustCompile("^" + want + "$").FindStringSubmatch(out.String())
	require.NotNil(t, m, "the output does not have the chapter's form")
	num := func(i int) float64 {
		f, err := strconv.ParseFloat(m[i], 64)
		require.NoError(t, err)
		return f
	}

	// 500 connections, unless the open-file limit lowered them (and said so).
	n := num(2)
	if m[1] == "" {
		require.Equal(t, 500.0, n)
	}
	require.Positive(t, n)
	for _, i := range []int{3, 5, 6, 9, 11} { // Stats().Conns, v3's count, and the replies' "N idle"
		require.Equal(t, n, num(i), "group %d", i)
	}
	require.Less(t, num(4), 0.05, "v4: goroutines per idle connection")
	require.InDelta(t, 2.0, num(7), 0.05, "v3: goroutines per idle connection")
	require.Equal(t, n+640, num(8), "v4: replies written, in all")
	require.Equal(t, n, num(10), "v3: replies written, in all")
}

// Flags that cannot make a demo are refused.
func TestBadConfig(t *testing.T) {
	var out bytes.Buffer
	for _, cfg := range []config{{0, 64, 640}, {500, 0, 640}, {500, 64, 10}} {
		require.Error(t, run(&out, cfg), "%+v", cfg)
	}
	require.Empty(t, out.String())
}
