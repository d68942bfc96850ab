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

	// make bench-all's file: every figure of the cross grid and the
	// allocations; 4 KiB is not in the sample.
	require.NoError(t, os.WriteFile(in, []byte(sampleCross), 0o644))
	var log bytes.Buffer
	opts, err := parseFlags([]string{"-in", in, "-out", filepath.Join(dir, "cross")}, &log)
	require.NoError(t, err)
	require.NoError(t, run(opts, &log))
	require.Contains(t, log.String(), "skipped cpu-echo-4096")
	require.Contains(t, log.String(), "skipped throughput-echo-4096")
	for _, f := range []string{"throughput-echo-64", "latency-p99-echo-64", "cpu-echo-64", "cpu-sleep", "allocs"} {
		fi, err := os.Stat(filepath.Join(dir, "cross", f+".png"))
		require.NoError(t, err, f)
		require.Positive(t, fi.Size())
	}

	_, err = parseFlags([]string{"-format", "gif"}, &log)
	require.ErrorContains(t, err, "want png or svg")
	require.NoError(t, os.WriteFile(in, []byte("PASS\n"), 0o644))
	opts, err = parseFlags([]string{"-in", in, "-out", dir}, &log)
	require.NoError(t, err)
	require.ErrorContains(t, run(opts, &log), "no benchmark results")
}

// Lines of make bench-all: the cross-process grid (benchcmp/cross), then
// the in-process rows for allocations, with the lines around them.
const sampleCross = `# uptime before:  23:38:07 up  2:18,  0 user,  load average: 7.32, 4.50, 2.88
goos: linux
goarch: amd64
pkg: github.com/rpcsteps/rpcsteps/benchcmp/cross
cpu: AMD EPYC
BenchmarkCrossEcho/size=64/callers=1/impl=netrpc-2         	       1	    101519 ns/op	      9850 calls/s	        63.10 cli-us/call	         0.09646 p50-ms	         0.1674 p99-ms	        68.78 srv-us/call
BenchmarkCrossEcho/size=64/callers=1/impl=v4-2             	       1	    113047 ns/op	      8846 calls/s	        46.80 cli-us/call	         0.09546 p50-ms	         0.1953 p99-ms	        55.71 srv-us/call
BenchmarkCrossEcho/size=64/callers=1/impl=raw-2            	       1	     52386 ns/op	     19089 calls/s	        27.80 cli-us/call	         0.04051 p50-ms	         0.1069 p99-ms	        20.56 srv-us/call
BenchmarkCrossEcho/size=64/callers=64/impl=netrpc-2        	       1	     30677 ns/op	     32598 calls/s	        15.75 cli-us/call	         1.582 p50-ms	         7.007 p99-ms	        17.08 srv-us/call
BenchmarkCrossEcho/size=64/callers=64/impl=v4-2            	       1	      9541 ns/op	    104807 calls/s	         4.464 cli-us/call	         0.5318 p50-ms	         2.090 p99-ms	         7.204 srv-us/call
BenchmarkCrossEcho/size=64/callers=64/impl=v4-2            	       1	      9000 ns/op	    111111 calls/s	         4.000 cli-us/call	         0.5000 p50-ms	         3.000 p99-ms	         7.000 srv-us/call
BenchmarkCrossEcho/size=64/callers=64/impl=raw-2           	       1	      4251 ns/op	    235224 calls/s	         3.368 cli-us/call	         0.2089 p50-ms	         0.8400 p99-ms	         1.220 srv-us/call
BenchmarkCrossSleep/size=64/callers=64/impl=v4-2           	       1	     30000 ns/op	     33333 calls/s	         5.000 cli-us/call	         1.900 p50-ms	         3.100 p99-ms	         6.000 srv-us/call
PASS
ok  	github.com/rpcsteps/rpcsteps/benchcmp/cross	22.851s
goos: linux
goarch: amd64
pkg: github.com/rpcsteps/rpcsteps/benchcmp
cpu: AMD EPYC
BenchmarkEcho/impl=netrpc/size=64/callers=64-2         	   10000	     29000 ns/op	     34482 calls/s	   1500000 p50-ns	   5000000 p99-ns	     866 B/op	      19 allocs/op
BenchmarkEcho/impl=v4/size=64/callers=64-2             	   10000	     11000 ns/op	     90909 calls/s	    600000 p50-ns	   1500000 p99-ns	     336 B/op	       7 allocs/op
BenchmarkEcho/impl=v4/size=4096/callers=64-2           	   10000	     12000 ns/op	     83333 calls/s	    700000 p50-ns	   1600000 p99-ns	    8811 B/op	       7 allocs/op
BenchmarkSleep/impl=v4/size=64/callers=64-2            	   10000	     30000 ns/op	     33333 calls/s	   1900000 p50-ns	   3100000 p99-ns	     334 B/op	       7 allocs/op
PASS
ok  	github.com/rpcsteps/rpcsteps/benchcmp	44.903s
# uptime after:  23:48:07 up  2:28,  0 user,  load average: 7.00, 4.50, 2.88
`

func TestParseCross(t *testing.T) {
	lines, err := Parse(strings.NewReader(sampleCross))
	require.NoError(t, err)
	require.Len(t, lines, 12) // the # lines, config lines, PASS and ok are not results
	l := lines[2]
	require.Equal(t, "CrossEcho", l.Func)
	require.Equal(t, map[string]string{"size": "64", "callers": "1", "impl": "raw"}, l.Keys)
	require.EqualValues(t, 1, l.Iters)
	require.Equal(t, map[string]float64{
		"ns/op": 52386, "calls/s": 19089, "cli-us/call": 27.80, "p50-ms": 0.04051,
		"p99-ms": 0.1069, "srv-us/call": 20.56,
	}, l.Metrics)

	s := Merge("sample", lines)
	v4 := s.Select("CrossEcho", map[string]string{"callers": "64", "impl": "v4"})
	require.Len(t, v4, 1)
	require.Equal(t, 2, v4[0].Runs)
	p99, ok := value(v4[0], []metric{{"p99-ms", 1}, {"p99-ns", 1e-6}})
	require.True(t, ok)
	require.InDelta(t, 2.545, p99, 1e-9) // the median of 2.090 and 3.000
	cpu, ok := sum(v4[0], "srv-us/call", "cli-us/call")
	require.True(t, ok)
	require.InDelta(t, (7.204+7.0)/2+(4.464+4.0)/2, cpu, 1e-9)

	// In-process lines have p99 in ns and no CPU.
	echo := s.Select("Echo", map[string]string{"impl": "v4", "size": "64"})
	require.Len(t, echo, 1)
	p99, ok = value(echo[0], []metric{{"p99-ms", 1}, {"p99-ns", 1e-6}})
	require.True(t, ok)
	require.InDelta(t, 1.5, p99, 1e-9)
	_, ok = sum(echo[0], "srv-us/call", "cli-us/call")
	require.False(t, ok)
}

// The line figures come from the cross-process lines where a file has
// them, the allocation bars from the in-process ones; an in-process file
// alone still draws, without CPU figures.
func TestFiguresCross(t *testing.T) {
	lines, err := Parse(strings.NewReader(sampleCross))
	require.NoError(t, err)
	s := Merge("cross.txt", lines)
	byFile := map[string]figure{}
	for _, f := range figures() {
		byFile[f.file] = f
	}
	for _, file := range []string{"throughput-echo-64", "latency-p99-echo-64", "cpu-echo-64", "throughput-sleep"} {
		c, err := byFile[file].build(s)
		require.NoError(t, err, file)
		require.NotNil(t, c, file)
		require.Contains(t, c.caption, "each server in its own process", file)
	}
	c, err := byFile["cpu-echo-64"].build(s)
	require.NoError(t, err)
	require.Contains(t, c.caption, "dashed: server")
	c, err = byFile["allocs"].build(s)
	require.NoError(t, err)
	require.Contains(t, c.caption, "client and server in one process")
	// The in-process lines do not stand in for missing cross-process
	// ones (none at 4 KiB here, but an in-process row at 4 KiB).
	for _, file := range []string{"cpu-echo-4096", "throughput-echo-4096"} {
		c, err = byFile[file].build(s)
		require.NoError(t, err)
		require.Nil(t, c, file)
	}

	lines, err = Parse(strings.NewReader(sample))
	require.NoError(t, err)
	old := Merge("old.txt", lines)
	c, err = byFile["throughput-echo-64"].build(old)
	require.NoError(t, err)
	require.Contains(t, c.caption, "client and server in one process")
	c, err = byFile["cpu-echo-64"].build(old)
	require.NoError(t, err)
	require.Nil(t, c)
}
