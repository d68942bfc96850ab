package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rpcsteps/rpcsteps/benchcmp"
)

// The end-to-end test re-executes the test binary as the server child,
// as loadgen re-executes itself: the child runs main before any test.
func init() {
	if len(os.Args) == 3 && os.Args[1] == "-"+serveFlag {
		main()
		os.Exit(0)
	}
}

// ants/v2, which v4 runs its methods on, starts its package-level default
// pool (two goroutines) when it is imported: the one thing rpcsteps accepts
// being started at import time. IgnoreCurrent ignores exactly the
// goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

func TestParseFlags(t *testing.T) {
	var out bytes.Buffer
	cfg, err := parseFlags(nil, &out)
	require.NoError(t, err)
	require.Equal(t, "v3", cfg.impls[0].Name)
	require.Equal(t, []int{64}, cfg.callers)
	require.Equal(t, 64, cfg.size)
	require.Equal(t, "Echo.Echo", cfg.method)

	cfg, err = parseFlags(strings.Fields("-impl all -callers 1,64,1024 -size 4096 -duration 2s -method sleep"), &out)
	require.NoError(t, err)
	require.Len(t, cfg.impls, len(benchcmp.Impls()))
	require.Equal(t, []int{1, 64, 1024}, cfg.callers)
	require.Equal(t, 4096, cfg.size)
	require.Equal(t, 2*time.Second, cfg.duration)
	require.Equal(t, "Echo.Sleep", cfg.method)

	cfg, err = parseFlags(strings.Fields("-impl raw"), &out) // the limit
	require.NoError(t, err)
	require.True(t, cfg.impls[0].EchoOnly)

	cfg, err = parseFlags(strings.Fields("-impl v4,v4-portable,v4-tls"), &out) // a list, extras included
	require.NoError(t, err)
	require.Len(t, cfg.impls, 3)
	require.Equal(t, "v4-tls", cfg.impls[2].Name)

	for args, want := range map[string]string{
		"-impl v9":                `-impl "v9": want one of netrpc, v1`,
		"-impl v4,v9":             `-impl "v9"`,
		"-callers 0":              "-callers",
		"-callers 8,x":            "want whole numbers",
		"-callers -3":             "from 1 to",
		"-size 4":                 "at least 8 bytes",
		"-duration 0s":            "positive duration",
		"-duration -1s":           "positive duration",
		"-method ping":            `-method "ping": want echo or sleep`,
		"-callers 4 extra":        "unexpected arguments",
		"-duration 5":             "invalid value",
		"-nosuchflag":             "not defined",
		"-" + serveFlag + " x":    `-impl "x"`,
		"-impl raw -method sleep": "serves echo only",
	} {
		_, err := parseFlags(strings.Fields(args), &out)
		require.ErrorContains(t, err, want, args)
	}

	// The usage lists the flags, but not the child's.
	out.Reset()
	_, err = parseFlags([]string{"-h"}, &out)
	require.Error(t, err)
	require.Contains(t, out.String(), "-callers")
	require.NotContains(t, out.String(), "-"+serveFlag)
}

func TestSummarize(t *testing.T) {
	spec := runSpec{impl: benchcmp.Impl{Name: "v3"}, method: "Echo.Echo", callers: 4, size: 64}
	var lat []time.Duration
	for i := range 1000 {
		lat = append(lat, time.Duration(1000-i)*time.Microsecond) // unsorted
	}
	s := summarize(spec, lat, 2*time.Second)
	require.EqualValues(t, 1000, s.calls)
	require.InDelta(t, 500, s.callsPerSec, 1e-9)
	require.Equal(t, 500*time.Microsecond, s.p50)
	require.Equal(t, 990*time.Microsecond, s.p99)
	require.Equal(t, 999*time.Microsecond, s.p999)
	require.Equal(t, time.Millisecond, s.maxLat)
	require.Contains(t, s.String(), "1000 calls in 2s: 500 calls/s; latency p50 500µs  p99 990µs  p99.9 999µs  max 1.00ms; 0 errors")

	empty := summarize(spec, nil, 0)
	require.Zero(t, empty.callsPerSec)
	require.Zero(t, empty.p99)

	s.srvCPU, s.cliCPU = 3400*time.Nanosecond, 21*time.Microsecond
	require.Contains(t, s.String(), "; 0 errors; CPU per call: server 3.4µs, client 21µs")
	var b bytes.Buffer
	printTable(&b, []*summary{s, empty})
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	require.Len(t, lines, 3)
	require.Regexp(t, `impl +method +size +callers +calls/s +p50 +p99 +p99\.9 +max +errors +srv CPU/call +cli CPU/call$`, lines[0])
	require.Regexp(t, `v3 +Echo.Echo +64 +4 +500 +500µs +990µs +999µs +1.00ms +0 +3.4µs +21µs$`, lines[1])
	require.Regexp(t, ` +0 +- +-$`, lines[2])
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                        "0ns",
		812 * time.Nanosecond:    "812ns",
		81234 * time.Nanosecond:  "81µs",
		1254 * time.Microsecond:  "1.25ms",
		16610 * time.Microsecond: "16.6ms",
		2500 * time.Millisecond:  "2.50s",
	} {
		require.Equal(t, want, fmtDur(d), d.String())
	}
}

// The whole path: a server child, one client, callers for a moment.
func TestRunAgainstChild(t *testing.T) {
	self, err := os.Executable()
	require.NoError(t, err)
	im, err := benchcmp.Lookup("v3")
	require.NoError(t, err)
	var out bytes.Buffer
	p := &progress{w: &out}
	spec := runSpec{impl: im, method: "Echo.Echo", callers: 4, size: 64, duration: 1200 * time.Millisecond}
	s, err := runAgainstChild(context.Background(), self, spec, p)
	require.NoError(t, err)
	require.Positive(t, s.calls)
	require.Zero(t, s.errors)
	require.Positive(t, s.p50)
	require.LessOrEqual(t, s.p50, s.p99)
	require.LessOrEqual(t, s.p99, s.p999)
	require.Positive(t, s.srvCPU)
	require.Positive(t, s.cliCPU)
	require.Contains(t, out.String(), "calls/s in the last second\n")

	// A cancelled run ends at once and says so.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s, err = runAgainstChild(ctx, self, spec, p)
	require.NoError(t, err)
	require.True(t, s.interrupted)
}

// LOADGEN_CLIENT_CPUPROFILE's window: the wrapped onWindow is still called
// at both edges, and the profile written between them is a file pprof
// wrote (gzip); a path that cannot be created is reported, not fatal.
func TestProfileWindow(t *testing.T) {
	path := t.TempDir() + "/cli.prof"
	var edges []bool
	edge := profileWindow(path, func(open bool) { edges = append(edges, open) })
	edge(true)
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) { // something to sample
	}
	edge(false)
	require.Equal(t, []bool{true, false}, edges)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Greater(t, len(b), 2)
	require.Equal(t, []byte{0x1f, 0x8b}, b[:2], "a gzipped profile")

	bad := profileWindow(t.TempDir()+"/no/such/dir/cli.prof", func(bool) {})
	bad(true)
	bad(false) // nothing was started: nothing to stop
}
