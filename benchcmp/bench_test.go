package benchcmp

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// ants/v2, which v4 runs its methods on, starts its package-level default
// pool (two goroutines) when it is imported: the one thing rpcsteps accepts
// being started at import time. IgnoreCurrent ignores exactly the
// goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

var (
	sizes       = []int{64, 4096}
	callerCount = []int{1, 64, 1024}
)

// start serves im on a loopback port and dials it.
func start(tb testing.TB, im Impl) Client {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	stop, err := im.Serve(ln)
	require.NoError(tb, err)
	c, err := im.Dial(ln.Addr().String())
	require.NoError(tb, err)
	tb.Cleanup(func() {
		c.Close()
		stop()
	})
	return c
}

// BenchmarkEcho is the grid: implementation × payload size × callers
// sharing one client. Besides time and allocations per call it reports
// calls/s and the measured p50 and p99 latency of single calls.
func BenchmarkEcho(b *testing.B) {
	for _, im := range Impls() {
		for _, size := range sizes {
			for _, callers := range callerCount {
				name := fmt.Sprintf("impl=%s/size=%d/callers=%d", im.Name, size, callers)
				b.Run(name, func(b *testing.B) { bench(b, im, "Echo.Echo", callers, size) })
			}
		}
	}
}

// BenchmarkSleep is a server that works: each call takes SleepTime (1 ms)
// in the method. What limits calls/s is then how many calls an
// implementation lets be in the server at once.
func BenchmarkSleep(b *testing.B) {
	for _, im := range Impls() {
		for _, callers := range []int{64, 1024} {
			name := fmt.Sprintf("impl=%s/size=64/callers=%d", im.Name, callers)
			b.Run(name, func(b *testing.B) { bench(b, im, "Echo.Sleep", callers, 64) })
		}
	}
}

// BenchmarkConns: ManyClients clients, one caller each, 64 B echo. Where
// the grid above shares one client, this gives the server a connection per
// caller (v1: a connection per call).
func BenchmarkConns(b *testing.B) {
	for _, im := range Impls() {
		name := fmt.Sprintf("impl=%s/size=64/clients=%d", im.Name, ManyClients)
		b.Run(name, func(b *testing.B) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(b, err)
			stop, err := im.Serve(ln)
			require.NoError(b, err)
			defer stop()
			clients := make([]Client, ManyClients)
			for i := range clients {
				clients[i], err = im.Dial(ln.Addr().String())
				require.NoError(b, err)
				defer clients[i].Close()
			}
			b.ReportAllocs()
			res, err := DriveClients(context.Background(), clients, "Echo.Echo", ManyClients, 64, int64(b.N), b.ResetTimer)
			b.StopTimer()
			require.NoError(b, err)
			b.ReportMetric(res.CallsPerSec(), "calls/s")
			b.ReportMetric(float64(res.Percentile(0.50).Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(res.Percentile(0.99).Nanoseconds()), "p99-ns")
		})
	}
}

func bench(b *testing.B, im Impl, method string, callers, size int) {
	c := start(b, im)
	b.ReportAllocs()
	res, err := Drive(context.Background(), c, method, callers, size, int64(b.N), b.ResetTimer)
	b.StopTimer()
	require.NoError(b, err)
	b.ReportMetric(res.CallsPerSec(), "calls/s")
	b.ReportMetric(float64(res.Percentile(0.50).Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(res.Percentile(0.99).Nanoseconds()), "p99-ns")
	if bc, ok := c.(Batcher); ok {
		b.ReportMetric(bc.FramesPerWrite(), "frames/write")
	}
}

// Every implementation, and the extras loadgen can run, passes the
// workload's own check: right replies, for every size and caller count.
func TestEchoAllImpls(t *testing.T) {
	for _, im := range append(Impls(), Extras()...) {
		t.Run(im.Name, func(t *testing.T) {
			c := start(t, im)
			for _, size := range sizes {
				res, err := Drive(context.Background(), c, "Echo.Echo", 8, size, 200, nil)
				require.NoError(t, err)
				require.EqualValues(t, 200, res.Calls)
				require.Positive(t, res.Percentile(0.99))
				require.LessOrEqual(t, res.Percentile(0.5), res.Percentile(0.99))
			}
			res, err := Drive(context.Background(), c, "Echo.Sleep", 16, 64, 32, nil)
			require.NoError(t, err)
			require.GreaterOrEqual(t, res.Percentile(0), SleepTime)
		})
	}
}

// brokenEcho answers with the wrong bytes: Drive must notice.
type brokenEcho struct{ Client }

func (b brokenEcho) Call(ctx context.Context, m string, args, reply any) error {
	if err := b.Client.Call(ctx, m, args, reply); err != nil {
		return err
	}
	(*reply.(*[]byte))[3] ^= 1
	return nil
}

func TestDriveChecksReplies(t *testing.T) {
	im, err := Lookup("netrpc")
	require.NoError(t, err)
	c := start(t, im)
	_, err = Drive(context.Background(), brokenEcho{c}, "Echo.Echo", 4, 64, 10, nil)
	require.ErrorContains(t, err, "does not match its request")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Drive(ctx, c, "Echo.Echo", 4, 64, 10, nil)
	require.ErrorIs(t, err, context.Canceled)

	_, err = Lookup("nope")
	require.Error(t, err)
}

func TestPercentile(t *testing.T) {
	r := Result{Calls: 100, Elapsed: time.Second}
	require.Zero(t, r.Percentile(0.5))
	for i := range 100 {
		r.Latencies = append(r.Latencies, time.Duration(i+1))
	}
	require.Equal(t, time.Duration(50), r.Percentile(0.5))
	require.Equal(t, time.Duration(99), r.Percentile(0.99))
	require.Equal(t, time.Duration(100), r.Percentile(1))
	require.InDelta(t, 100, r.CallsPerSec(), 1e-9)
}
