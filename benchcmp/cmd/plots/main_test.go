package main

import (
	"bytes"
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

// Real lines from docs/results/2026-11-22-netrpc-v1-v2-v3.txt, and the
// lines around them.
const sample = `goos: linux
goarch: amd64
pkg: github.com/rpcsteps/rpcsteps/benchcmp
cpu: AMD EPYC
BenchmarkEcho/impl=netrpc/size=64/callers=1-2         	   36214	     32095 ns/op	     31205 calls/s	     24097 p50-ns	    114712 p99-ns	     857 B/op	      19 allocs/op
BenchmarkEcho/impl=netrpc/size=64/callers=1-2         	   33777	     36873 ns/op	     27163 calls/s	     24346 p50-ns	    153731 p99-ns	     856 B/op	      19 allocs/op
BenchmarkEcho/impl=netrpc/size=64/callers=1-2         	   34198	     35188 ns/op	     28475 calls/s	     23476 p50-ns	    126134 p99-ns	     856 B/op	      19 allocs/op
BenchmarkEcho/impl=netrpc/size=64/callers=1-2         	   35931	     31998 ns/op	     31299 calls/s	     22354 p50-ns	    112453 p99-ns	     856 B/op	      19 allocs/op
BenchmarkEcho/impl=v3/size=64/callers=1-2             	   44061	     26385 ns/op	     37963 calls/s	         1.000 frames/write	     21182 p50-ns	     86470 p99-ns	     368 B/op	       8 allocs/op
BenchmarkEcho/impl=v3/size=64/callers=1-2             	   47818	     22187 ns/op	     45139 calls/s	         1.000 frames/write	     18238 p50-ns	     61337 p99-ns	     368 B/op	       8 allocs/op
BenchmarkEcho/impl=v3/size=64/callers=1-2             	   49441	     24378 ns/op	     41090 calls/s	         1.000 frames/write	     18408 p50-ns	     84172 p99-ns	     368 B/op	       8 allocs/op
BenchmarkEcho/impl=v3/size=64/callers=64-2            	  100375	     10979 ns/op	     91627 calls/s	    664253 p50-ns	   1517378 p99-ns	     856 B/op	      19 allocs/op
BenchmarkSleep/impl=netrpc/size=64/callers=64-2       	   33716	     35672 ns/op	     28081 calls/s	   2199135 p50-ns	   4490780 p99-ns	     953 B/op	      20 allocs/op
BenchmarkSleep/impl=netrpc/size=64/callers=64
BenchmarkSleep/impl=netrpc/size=64/callers=64-2       	   30052	     38095 ns/op	     26291 calls/s	   2340592 p50-ns	   5583399 p99-ns	     953 B/op	      20 allocs/op
PASS
ok  	github.com/rpcsteps/rpcsteps/benchcmp	322.883s
`

func TestParse(t *testing.T) {
	lines, err := Parse(strings.NewReader(sample))
	require.NoError(t, err)
	require.Len(t, lines, 10) // the name-only line is not a result

	l := lines[4]
	require.Equal(t, "BenchmarkEcho/impl=v3/size=64/callers=1", l.Name)
	require.Equal(t, "Echo", l.Func)
	require.Equal(t, map[string]string{"impl": "v3", "size": "64", "callers": "1"}, l.Keys)
	require.Equal(t, 2, l.Procs)
	require.EqualValues(t, 44061, l.Iters)
	require.Equal(t, map[string]float64{
		"ns/op": 26385, "calls/s": 37963, "frames/write": 1, "p50-ns": 21182,
		"p99-ns": 86470, "B/op": 368, "allocs/op": 8,
	}, l.Metrics)
	require.Equal(t, "Sleep", lines[8].Func)
}

func TestParseNames(t *testing.T) {
	for in, want := range map[string]Line{
		"BenchmarkX 10 5 ns/op":    {Name: "BenchmarkX", Func: "X", Procs: 1, Keys: map[string]string{}},
		"BenchmarkX-16 10 5 ns/op": {Name: "BenchmarkX", Func: "X", Procs: 16, Keys: map[string]string{}},
		"BenchmarkX/a=1/plain/b=x-y-8 10 5 ns/op": {Name: "BenchmarkX/a=1/plain/b=x-y", Func: "X", Procs: 8,
			Keys: map[string]string{"a": "1", "#2": "plain", "b": "x-y"}},
		"BenchmarkX/size=64/callers=1-2 10 5 ns/op": {Name: "BenchmarkX/size=64/callers=1", Func: "X", Procs: 2,
			Keys: map[string]string{"size": "64", "callers": "1"}},
	} {
		l, ok, err := parseLine(in)
		require.NoError(t, err, in)
		require.True(t, ok, in)
		require.Equal(t, want.Name, l.Name, in)
		require.Equal(t, want.Func, l.Func, in)
		require.Equal(t, want.Procs, l.Procs, in)
		require.Equal(t, want.Keys, l.Keys, in)
	}

	for in, want := range map[string]string{
		"BenchmarkX-2 10 5 ns/op 7":  "value-unit pairs",
		"BenchmarkX-2 10 five ns/op": `metric "ns/op"`,
		"Benchmark/a=1-2 10 5 ns/op": "no benchmark function name",
	} {
		_, err := Parse(strings.NewReader("goos: linux\n" + in + "\n"))
		require.ErrorContains(t, err, want, in)
		require.ErrorContains(t, err, "line 2", in)
	}
}

func TestMerge(t *testing.T) {
	lines, err := Parse(strings.NewReader(sample))
	require.NoError(t, err)
	s := Merge("sample", lines)
	require.Len(t, s.Points, 4)

	p := s.Points[0] // netrpc, 4 runs: the median is the mean of the middle two
	require.Equal(t, 4, p.Runs)
	require.InDelta(t, (28475+31205)/2.0, p.Metrics["calls/s"], 1e-9)
	require.InDelta(t, 856, p.Metrics["B/op"], 1e-9)
	p = s.Points[1] // v3, 3 runs
	require.Equal(t, 3, p.Runs)
	require.InDelta(t, 41090, p.Metrics["calls/s"], 1e-9)
	require.InDelta(t, 84172, p.Metrics["p99-ns"], 1e-9)

	echo := s.Select("Echo", map[string]string{"size": "64", "callers": "1"})
	require.Len(t, echo, 2)
	require.Equal(t, []string{"netrpc", "v3"}, Values(echo, "impl"))
	require.Len(t, s.Select("Sleep", nil), 1)
	require.Empty(t, s.Select("Echo", map[string]string{"size": "4096"}))
	require.Equal(t, []string{"1", "64"}, Values(s.Points, "callers"))
}

func TestTicks(t *testing.T) {
	require.Equal(t, 5000.0, niceBelow(5341))
	require.Equal(t, 20000.0, niceBelow(29000))
	require.Equal(t, 0.1, niceBelow(0.1))
	require.Equal(t, 500000.0, niceAbove(250000))
	require.Equal(t, 1000.0, niceAbove(501))
	require.Equal(t, "2k", fmtSI(2000))
	require.Equal(t, "1.5M", fmtSI(1.5e6))
	require.Equal(t, "50", fmtSI(50))
}

// Every figure is drawn from the sample, in both formats; those it has no
// data for (4 KiB) are skipped.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "latest.txt")
	require.NoError(t, os.WriteFile(in, []byte(sample), 0o644))
	for _, format := range []string{"png", "svg"} {
		var log bytes.Buffer
		opts, err := parseFlags([]string{"-in", in, "-out", filepath.Join(dir, format), "-format", format}, &log)
		require.NoError(t, err)
		require.NoError(t, run(opts, &log))
		require.Contains(t, log.String(), "skipped throughput-echo-4096")
		for _, f := range []string{"throughput-echo-64", "latency-p99-sleep", "allocs"} {
			fi, err := os.Stat(filepath.Join(dir, format, f+"."+format))
			require.NoError(t, err)
			require.Positive(t, fi.Size())
		}
	}

	var log bytes.Buffer
	_, err := parseFlags([]string{"-format", "gif"}, &log)
	require.ErrorContains(t, err, "want png or svg")
	require.NoError(t, os.WriteFile(in, []byte("PASS\n"), 0o644))
	opts, err := parseFlags([]string{"-in", in, "-out", dir}, &log)
	require.NoError(t, err)
	require.ErrorContains(t, run(opts, &log), "no benchmark results")
}
