// Package cross is the benchmark grid of `make bench-all` measured as users
// get it: each implementation's server in a process of its own, the client
// in the benchmark's. Its benchmarks are in cross_test.go; this package
// holds no other code.
//
//	go test -run '^$' -bench . -count 6 -benchtime 1s ./benchcmp/cross > cross.txt
//	go tool benchstat -col /impl cross.txt
//
// In benchcmp's own benchmarks client and server share one process, so
// one Go scheduler over the same Ps, one heap and one garbage collector:
// on 2 cores v4 with one caller looks half as fast as v3 there, and across
// processes it is as fast as any. What follows are the choices made, and
// why.
//
// The grid is benchcmp's: Echo with 64 B and 4 KiB payloads and 1, 64 and
// 1,024 callers sharing one client; Sleep, the 1 ms method, with 64 and
// 1,024 callers; Conns, 1,000 clients with one caller each (benchcmp's
// ManyClients). Every implementation of benchcmp.Impls runs in it, and
// benchcmp.Raw, a length-prefixed echo with no RPC at all, as the
// transport's limit (Echo and Conns only: see Raw for why, and for why its
// client shares one connection, as the others do). v4-portable and v4-tls
// are left out to keep the grid within its time; loadgen runs them.
//
// Names put the implementation last, e.g.
// BenchmarkCrossEcho/size=64/callers=1024/impl=v4, for two reasons:
// `benchstat -col /impl` then makes one row per cell and one column per
// implementation, and the implementations of one cell run one after
// another (go test repeats each sub-benchmark -count times in a row, so a
// cell's six implementations run within a minute at -count 6), so that a
// load that comes and goes on a shared machine touches them more alike
// and the ratios against netrpc, the first column, hold better than the
// absolute numbers.
//
// Each run (each sub-benchmark, each -count) starts a new server child:
// the test binary itself, re-executed with RPCSTEPS_CROSS_SERVE naming the
// implementation (no `go run` or build at benchmark time), which runs
// benchcmp.ServeChild, as loadgen's -serve does. It dials the child (one
// client; Conns: 1,000), lets the callers call for -cross.warmup
// (unmeasured: connections, buffers, goroutine stacks and the GC's pace
// settle), then measures a window of -benchtime. The runs are time-based
// because b.N would not work across processes: each ramp-up step of
// b.N would start a child again or measure a server warmed by the
// previous step, and the window would vary with the rate. The benchmark
// function therefore runs once per -count (b.N is 1; the line's count
// column says 1) and reports ns/op itself with b.ReportMetric: the
// window's wall time over the calls that ended in it, so that ns/op is
// still the wall time per call. With -benchtime Nx (make bench-smoke's
// 1x) the run is b.N calls, no warm-up, and ns/op is Go's own: every row
// runs, briefly.
//
// Each line reports, besides ns/op:
//
//	calls/s       calls that ended in the window over its length
//	p50-ms        the median latency of those calls, from each call's own
//	p99-ms        time (not the window over the calls), in milliseconds
//	srv-us/call   the server child's CPU time (user + system, all threads:
//	              getrusage in the child, asked at the window's edges)
//	              over the window's calls, in microseconds
//	cli-us/call   the same for the benchmark process: the client, and the
//	              driver's timing and checking of every reply
//
// Every reply is checked against its request (the first 8 bytes name the
// caller and the call); a wrong reply or a failed call fails the benchmark.
//
// No server child is left behind: the normal path ends it with SIGTERM
// and checks its exit; a failed benchmark kills it from b.Cleanup; if the
// benchmark process itself dies (a -timeout panic, a kill -9), the child
// sees its stdin close and exits, and on Linux the kernel kills it too
// (Pdeathsig).
//
// v1 dials a connection per call, also across processes. Its server closes
// first, so the TIME_WAIT sockets are the server's and hold no ephemeral
// port of the client's; the kernel's TIME_WAIT table fills up
// (net.ipv4.tcp_max_tw_buckets) and it recycles the oldest, as in
// benchcmp's in-process grid, which this one follows here too.
package cross
