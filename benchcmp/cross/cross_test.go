package cross

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rpcsteps/rpcsteps/benchcmp"
)

// serveEnv names the implementation a re-executed test binary serves.
const serveEnv = "RPCSTEPS_CROSS_SERVE"

var warmup = flag.Duration("cross.warmup", 200*time.Millisecond, "how long each run calls before its measured window opens (a duration -benchtime only)")

// ants/v2, which v4 runs its methods on, starts its package-level default
// pool (two goroutines) when it is imported: the one thing rpcsteps accepts
// being started at import time. IgnoreCurrent ignores exactly the
// goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) {
	if name := os.Getenv(serveEnv); name != "" {
		os.Exit(serveMain(name))
	}
	if os.Getenv(orphanEnv) != "" {
		os.Exit(orphanMain())
	}
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

// serveMain is the server child: the test binary re-executed.
func serveMain(name string) int {
	im, err := benchcmp.Lookup(name)
	if err == nil {
		err = benchcmp.ServeChild(im, os.Stdin, os.Stdout)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cross: server child (%s): %v\n", name, err)
		return 1
	}
	return 0
}

// The grid: benchcmp's, with the limit (raw) where it applies.
var (
	sizes        = []int{64, 4096}
	echoCallers  = []int{1, 64, 1024}
	sleepCallers = []int{64, 1024}
)

// impls are the implementations of the grid: benchcmp's and raw; with
// sleep, those that serve Echo.Sleep.
func impls(sleep bool) []benchcmp.Impl {
	var ims []benchcmp.Impl
	for _, im := range append(benchcmp.Impls(), benchcmp.Raw()) {
		if !sleep || !im.EchoOnly {
			ims = append(ims, im)
		}
	}
	return ims
}

// cell is one sub-benchmark's workload.
type cell struct {
	impl    benchcmp.Impl
	method  string
	size    int
	callers int
	clients int // 1: the callers share one client; else one client per caller
}

// name is the sub-benchmark's name: the keys of the workload, then impl,
// so that benchstat -col /impl makes a row of each workload.
func (c cell) name() string {
	if c.clients > 1 {
		return fmt.Sprintf("size=%d/clients=%d/impl=%s", c.size, c.clients, c.impl.Name)
	}
	return fmt.Sprintf("size=%d/callers=%d/impl=%s", c.size, c.callers, c.impl.Name)
}

func echoCells() []cell {
	var cs []cell
	for _, size := range sizes {
		for _, callers := range echoCallers {
			for _, im := range impls(false) {
				cs = append(cs, cell{impl: im, method: "Echo.Echo", size: size, callers: callers, clients: 1})
			}
		}
	}
	return cs
}

func sleepCells() []cell {
	var cs []cell
	for _, callers := range sleepCallers {
		for _, im := range impls(true) {
			cs = append(cs, cell{impl: im, method: "Echo.Sleep", size: 64, callers: callers, clients: 1})
		}
	}
	return cs
}

func connsCells() []cell {
	var cs []cell
	for _, im := range impls(false) {
		cs = append(cs, cell{impl: im, method: "Echo.Echo", size: 64, callers: benchcmp.ManyClients, clients: benchcmp.ManyClients})
	}
	return cs
}

// BenchmarkCrossEcho: payloads of 64 B and 4 KiB echoed, 1, 64 and 1,024
// callers sharing one client, the server in a child process.
func BenchmarkCrossEcho(b *testing.B) { runCells(b, echoCells()) }

// BenchmarkCrossSleep: a method that takes benchcmp.SleepTime (1 ms), 64
// and 1,024 callers sharing one client.
func BenchmarkCrossSleep(b *testing.B) { runCells(b, sleepCells()) }

// BenchmarkCrossConns: benchcmp.ManyClients clients with one caller each,
// 64 B echo.
func BenchmarkCrossConns(b *testing.B) { runCells(b, connsCells()) }

func runCells(b *testing.B, cells []cell) {
	for _, c := range cells {
		b.Run(c.name(), func(b *testing.B) { benchCell(b, c) })
	}
}

// benchCell is one run: a server child, its clients, one measurement.
func benchCell(b *testing.B, c cell) {
	window, count := runLength(b)
	srv := startServer(b, c.impl.Name)
	clients := dial(b, c.impl, srv.Addr, c.clients)
	var m *measurement
	var err error
	if count {
		m, err = measureCalls(srv, clients, c, int64(b.N), b.ResetTimer)
	} else {
		m, err = measureWindow(srv, clients, c, *warmup, window, b.ResetTimer)
	}
	b.StopTimer()
	require.NoError(b, err)
	for _, cl := range clients {
		require.NoError(b, cl.Close())
	}
	require.NoError(b, srv.End())
	if !count {
		b.ReportMetric(float64(m.elapsed.Nanoseconds())/float64(m.calls), "ns/op")
	}
	m.report(b)
}

// runLength reads -benchtime: a window of that long, or (for Nx) count.
func runLength(b *testing.B) (window time.Duration, count bool) {
	f := flag.Lookup("test.benchtime")
	if f == nil {
		return time.Second, false
	}
	v := f.Value.String()
	if strings.HasSuffix(v, "x") {
		return 0, true
	}
	d, err := time.ParseDuration(v)
	require.NoError(b, err, "-benchtime %q", v)
	return d, false
}

// startServer starts the server child of the implementation named name.
// It is killed when tb's test or benchmark ends, failed or not, unless
// ended before.
func startServer(tb testing.TB, name string) *benchcmp.ServerProcess {
	tb.Helper()
	self, err := os.Executable()
	require.NoError(tb, err)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), serveEnv+"="+name)
	srv, err := benchcmp.StartServer(cmd)
	require.NoError(tb, err)
	tb.Cleanup(srv.Kill)
	return srv
}

// dial makes n clients of the server at addr, closed at the end of tb
// unless closed before (Close twice is allowed by the contract).
func dial(tb testing.TB, im benchcmp.Impl, addr string, n int) []benchcmp.Client {
	tb.Helper()
	clients := make([]benchcmp.Client, 0, n)
	tb.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	for range n {
		c, err := im.Dial(addr)
		require.NoError(tb, err)
		clients = append(clients, c)
	}
	return clients
}

// measurement is one run's numbers.
type measurement struct {
	calls          int64
	elapsed        time.Duration
	lat            []time.Duration // sorted
	srvCPU, cliCPU time.Duration
}

// measureWindow runs c's load for warmup, then measures a window.
// restart, if set, is called when the window opens (b.ResetTimer).
func measureWindow(srv *benchcmp.ServerProcess, clients []benchcmp.Client, c cell, warmup, window time.Duration, restart func()) (*measurement, error) {
	cpu := &benchcmp.CPUMeter{Server: srv}
	load := &benchcmp.Load{
		Clients: clients, Method: c.method, Callers: c.callers, Size: c.size,
		Warmup: warmup, Window: window, MaxErrors: 1,
		OnWindow: func(open bool) {
			if open && restart != nil {
				restart()
			}
			cpu.Edge(open)
		},
	}
	res, err := load.Run(context.Background())
	if err == nil {
		err = res.Err()
	}
	if err == nil && res.Calls == 0 {
		err = fmt.Errorf("no call ended in the %v window", window)
	}
	if err != nil {
		return nil, err
	}
	if cpu.Err != nil {
		return nil, cpu.Err
	}
	return &measurement{calls: res.Calls, elapsed: res.Elapsed, lat: res.Latencies, srvCPU: cpu.ServerCPU, cliCPU: cpu.ClientCPU}, nil
}

// measureCalls makes calls calls of c's load (benchcmp.DriveClients).
// restart, if set, is called when they start (b.ResetTimer).
func measureCalls(srv *benchcmp.ServerProcess, clients []benchcmp.Client, c cell, calls int64, restart func()) (*measurement, error) {
	cpu := &benchcmp.CPUMeter{Server: srv}
	res, err := benchcmp.DriveClients(context.Background(), clients, c.method, c.callers, c.size, calls, func() {
		if restart != nil {
			restart()
		}
		cpu.Edge(true)
	})
	if err != nil {
		return nil, err
	}
	cpu.Edge(false)
	if cpu.Err != nil {
		return nil, cpu.Err
	}
	return &measurement{calls: res.Calls, elapsed: res.Elapsed, lat: res.Latencies, srvCPU: cpu.ServerCPU, cliCPU: cpu.ClientCPU}, nil
}

// percentile is benchcmp.Result's.
func (m *measurement) percentile(p float64) time.Duration {
	r := benchcmp.Result{Calls: m.calls, Elapsed: m.elapsed, Latencies: m.lat}
	return r.Percentile(p)
}

// metricReporter is what report needs of a *testing.B.
type metricReporter interface{ ReportMetric(float64, string) }

// report adds the line's metrics (units as in the package comment).
func (m *measurement) report(b metricReporter) {
	n := float64(m.calls)
	b.ReportMetric(n/m.elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(m.percentile(0.50))/1e6, "p50-ms")
	b.ReportMetric(float64(m.percentile(0.99))/1e6, "p99-ms")
	b.ReportMetric(float64(m.srvCPU)/1e3/n, "srv-us/call")
	b.ReportMetric(float64(m.cliCPU)/1e3/n, "cli-us/call")
}

// --- tests ---

// The names line up for benchstat -col /impl: the workload's keys, then
// impl; the grid is benchcmp's with raw beside it (not in Sleep).
func TestCellNames(t *testing.T) {
	echo, sleep, conns := echoCells(), sleepCells(), connsCells()
	n := len(benchcmp.Impls())
	require.Len(t, echo, 2*3*(n+1))
	require.Len(t, sleep, 2*n)
	require.Len(t, conns, n+1)
	require.Equal(t, "size=64/callers=1/impl=netrpc", echo[0].name())
	require.Equal(t, "size=4096/callers=1024/impl=raw", echo[len(echo)-1].name())
	require.Equal(t, "size=64/callers=1024/impl=v4", sleep[len(sleep)-1].name())
	require.Equal(t, "size=64/clients=1000/impl=raw", conns[len(conns)-1].name())
	for _, c := range sleep {
		require.NotEqual(t, "raw", c.impl.Name)
	}
	// The benchmark lines parse back to those keys (cmd/plots reads them).
	line := "BenchmarkCrossEcho/" + echo[4].name() + "-2"
	require.Equal(t, "BenchmarkCrossEcho/size=64/callers=1/impl=v4-2", line)
}

// fakeB records what report reports.
type fakeB map[string]float64

func (f fakeB) ReportMetric(v float64, unit string) { f[unit] = v }

func TestReport(t *testing.T) {
	m := &measurement{calls: 1000, elapsed: 500 * time.Millisecond, srvCPU: 20 * time.Millisecond, cliCPU: 30 * time.Millisecond}
	for i := range 1000 {
		m.lat = append(m.lat, time.Duration(i+1)*time.Microsecond)
	}
	got := fakeB{}
	m.report(got)
	require.InDelta(t, 2000, got["calls/s"], 1e-9)
	require.InDelta(t, 0.500, got["p50-ms"], 1e-9)
	require.InDelta(t, 0.990, got["p99-ms"], 1e-9)
	require.InDelta(t, 20, got["srv-us/call"], 1e-9)
	require.InDelta(t, 30, got["cli-us/call"], 1e-9)
}

// A real child, raw and v4, both ways of measuring: the numbers are there
// and sane, and the server's CPU is the child's (more than nothing).
func TestMeasure(t *testing.T) {
	for _, name := range []string{"raw", "v4"} {
		t.Run(name, func(t *testing.T) {
			im, err := benchcmp.Lookup(name)
			require.NoError(t, err)
			srv := startServer(t, name)
			clients := dial(t, im, srv.Addr, 1)
			c := cell{impl: im, method: "Echo.Echo", size: 64, callers: 8, clients: 1}
			restarts := 0
			m, err := measureWindow(srv, clients, c, 50*time.Millisecond, 300*time.Millisecond, func() { restarts++ })
			require.NoError(t, err)
			require.Equal(t, 1, restarts)
			require.Positive(t, m.calls)
			require.InDelta(t, 300*time.Millisecond, m.elapsed, float64(100*time.Millisecond))
			require.Positive(t, m.srvCPU)
			require.Positive(t, m.cliCPU)
			require.LessOrEqual(t, m.percentile(0.5), m.percentile(0.99))

			m, err = measureCalls(srv, clients, c, 500, nil)
			require.NoError(t, err)
			require.EqualValues(t, 500, m.calls)
			require.NoError(t, srv.End())
		})
	}
}

// brokenEcho flips a byte of every reply.
type brokenEcho struct{ benchcmp.Client }

func (b brokenEcho) Call(ctx context.Context, m string, args, reply any) error {
	if err := b.Client.Call(ctx, m, args, reply); err != nil {
		return err
	}
	(*reply.(*[]byte))[9] ^= 1
	return nil
}

// A wrong reply fails the measurement, both ways; so does a server that
// is gone.
func TestMeasureFails(t *testing.T) {
	im, err := benchcmp.Lookup("v3")
	require.NoError(t, err)
	srv := startServer(t, "v3")
	c := cell{impl: im, method: "Echo.Echo", size: 64, callers: 4, clients: 1}
	cl := dial(t, im, srv.Addr, 1)[0]
	_, err = measureWindow(srv, []benchcmp.Client{brokenEcho{cl}}, c, 0, 100*time.Millisecond, nil)
	require.ErrorContains(t, err, "does not match its request")
	_, err = measureCalls(srv, []benchcmp.Client{brokenEcho{cl}}, c, 10, nil)
	require.ErrorContains(t, err, "does not match its request")

	// (raw here: v3's client, redialling from 4 callers at once, reads its
	// retry time after unlocking, which the race detector reports.)
	raw := benchcmp.Raw()
	rawSrv := startServer(t, "raw")
	rc := dial(t, raw, rawSrv.Addr, 1)
	rawSrv.Kill()
	c.impl = raw
	_, err = measureWindow(rawSrv, rc, c, 0, 100*time.Millisecond, nil)
	require.Error(t, err)
}

// The benchmark itself, through testing.Benchmark at -benchtime's default
// (a 1 s window): its line has every metric, and ns/op is the wall time
// per call (1e9 / calls/s), not the window.
func TestBenchCellLine(t *testing.T) {
	if testing.Short() {
		t.Skip("a 1 s window")
	}
	im, err := benchcmp.Lookup("raw")
	require.NoError(t, err)
	r := testing.Benchmark(func(b *testing.B) {
		benchCell(b, cell{impl: im, method: "Echo.Echo", size: 64, callers: 4, clients: 1})
	})
	require.Equal(t, 1, r.N)
	for _, unit := range []string{"calls/s", "p50-ms", "p99-ms", "srv-us/call", "cli-us/call"} {
		require.Positive(t, r.Extra[unit], unit)
	}
	require.InDelta(t, 1e9/r.Extra["calls/s"], r.Extra["ns/op"], 1e9/r.Extra["calls/s"]*0.01)
	require.Regexp(t, `^\s+1\s+\d+ ns/op\s+\d+ calls/s`, r.String())
}

// End and Kill leave no process: the pid is gone (or a zombie no one
// reaps yet). Kill runs from the cleanup of a test that stopped with
// SkipNow, the way a failing benchmark's FailNow stops it.
func TestServerEnds(t *testing.T) {
	srv := startServer(t, "v2")
	require.True(t, alive(srv.Pid()))
	require.NoError(t, srv.End())
	require.False(t, alive(srv.Pid()))
	require.NoError(t, srv.End()) // a second End does nothing

	var pid int
	t.Run("skipped", func(t *testing.T) {
		pid = startServer(t, "v2").Pid()
		t.SkipNow()
	})
	require.NotZero(t, pid)
	require.False(t, alive(pid))
}

// orphanEnv makes the test binary a parent that starts a server child,
// prints its pid and waits to be killed.
const orphanEnv = "RPCSTEPS_CROSS_ORPHAN_TEST"

func orphanMain() int {
	self, err := os.Executable()
	if err != nil {
		return 1
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), serveEnv+"=v3", orphanEnv+"=")
	srv, err := benchcmp.StartServer(cmd)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(srv.Pid())
	time.Sleep(time.Hour) // until the test kills this process
	return 1
}

// A parent that dies without ending its server (kill -9) leaves no server
// behind: the child sees its stdin close and exits, and on Linux the
// kernel kills it (Pdeathsig).
func TestOrphanedServerExits(t *testing.T) {
	self, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), orphanEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var pid int
	_, err = fmt.Fscan(out, &pid)
	require.NoError(t, err)
	require.True(t, alive(pid))
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.Eventually(t, func() bool { return !alive(pid) }, 10*time.Second, 10*time.Millisecond)
}

// alive reports whether process pid runs: it exists and is not a zombie.
// (Where /proc is missing it only asks whether the pid exists.)
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err == nil {
		// pid (comm) state ...: the state follows the last ')'.
		s := string(stat)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
			return s[i+2] != 'Z' && s[i+2] != 'X'
		}
		return true
	}
	if !errors.Is(err, os.ErrNotExist) || runtime.GOOS != "linux" {
		p, err := os.FindProcess(pid)
		return err == nil && p.Signal(syscall.Signal(0)) == nil
	}
	return false
}
