package cluster_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// Round robin over a static list of three: 300 calls from 6 callers, 100
// to each server, as both the servers and Stats count them.
func TestRoundRobinSpreadsEvenly(t *testing.T) {
	a, b, c := startServer(t, "", nil), startServer(t, "", nil), startServer(t, "", nil)
	cl := dial(t, endpoints(a, b, c), cluster.WithBalancer(cluster.RoundRobin()))
	waitUp(t, cl, a, b, c)
	ctx := testCtx(t, 20*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for g := range 6 {
		wg.Go(func() {
			for i := range 50 {
				if err := echo(ctx, cl, fmt.Sprint(g, "/", i)); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for _, s := range []*testServer{a, b, c} {
		require.EqualValues(t, 100, s.svc.calls.Load(), "calls served by %s", s.addr)
		st, ok := stats(cl, s.ep)
		require.True(t, ok)
		require.EqualValues(t, 100, st.Calls)
		require.Zero(t, st.Failures)
		require.Zero(t, st.InFlight)
		require.Equal(t, cluster.StateUp, st.State)
		require.NoError(t, st.LastError)
	}
}

// Servers join and leave, as the resolver says, while 64 callers call
// without pause: no call fails (there is always a server up), none hangs
// (each has 5 s), the servers that join get calls, and those that leave
// get none once they are out, and are closed once drained; only then is
// the server stopped, as a deployment deregisters a server before it
// stops it.
func TestServersJoinAndLeaveUnderLoad(t *testing.T) {
	var s [5]*testServer
	for i := range s {
		s[i] = startServer(t, "", nil)
	}
	d := newDriven()
	cl := dialDriven(t, d, endpoints(s[0], s[1]), cluster.WithBalancer(cluster.P2C()))
	waitUp(t, cl, s[0], s[1])

	var stop atomic.Bool
	var calls, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := echo(ctx, cl, fmt.Sprint(g, "/", i))
				cancel()
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	pause := func() { time.Sleep(100 * time.Millisecond) }
	leave := func(set []cluster.Endpoint, gone *testServer) {
		t.Helper()
		d.set(t, set...)
		require.Eventually(t, func() bool { _, listed := stats(cl, gone.ep); return !listed }, 5*time.Second, time.Millisecond,
			"%s was not drained and closed", gone.addr)
		served := gone.svc.calls.Load()
		pause()
		require.Equal(t, served, gone.svc.calls.Load(), "calls went to %s after it left", gone.addr)
		gone.close()
	}
	pause()
	d.set(t, endpoints(s[0], s[1], s[2])...)
	pause()
	d.set(t, endpoints(s[0], s[1], s[2], s[3])...)
	pause()
	leave(endpoints(s[1], s[2], s[3]), s[0])
	d.set(t, endpoints(s[1], s[2], s[3], s[4])...)
	pause()
	leave(endpoints(s[2], s[3], s[4]), s[1])
	pause()
	stop.Store(true)
	wg.Wait()

	if err := firstErr.Load(); err != nil {
		t.Fatalf("%d of %d calls failed; the first: %v", failed.Load(), calls.Load(), *err)
	}
	for _, srv := range s[2:] {
		assert.NotZero(t, srv.svc.calls.Load(), "%s joined and got no call", srv.addr)
	}
	t.Logf("%d calls; served: %d %d %d %d %d", calls.Load(), s[0].svc.calls.Load(), s[1].svc.calls.Load(),
		s[2].svc.calls.Load(), s[3].svc.calls.Load(), s[4].svc.calls.Load())
}

// prefer is a Balancer that sends every call to one endpoint while it is
// up, and round robin to the others otherwise.
type prefer struct {
	ep   cluster.Endpoint
	next atomic.Uint64
}

func (p *prefer) Pick(_ context.Context, _ string, up []*cluster.Backend) int {
	for i, b := range up {
		if b.Endpoint() == p.ep {
			return i
		}
	}
	return int(p.next.Add(1) % uint64(len(up)))
}

// A server that dies with calls queued for it: the one it read (and was
// running) fails with ErrConnLost, and so may others it had received;
// those never written to it go to the other servers and succeed; so do
// the idempotent ones, whether it received them or not; no call fails
// with ErrNotSent, and the dead server ran only the call it read.
//
// The server reads one request at a time (WithMaxInFlight(1)) and its
// method holds it, so the 1 MiB requests behind it fill the socket, then
// the client's queue; then the server is closed, with bytes unread: a
// reset.
func TestServerClosedMidCall(t *testing.T) {
	stuck := make(chan struct{})
	defer close(stuck) // the method ignores its ctx: it would outlive the server
	a := startServer(t, "", &Svc{stuck: stuck}, epollbatch.WithMaxInFlight(1))
	// b and c answer the calls moved to them at once: room for their replies.
	roomy := epollbatch.WithMaxBytesInFlight(64 << 20)
	b, c := startServer(t, "", nil, roomy), startServer(t, "", nil, roomy)
	cl := dial(t, endpoints(a, b, c), cluster.WithBalancer(&prefer{ep: a.ep}),
		cluster.WithClientOptions(epollbatch.WithCodec(codec.Raw)))
	waitUp(t, cl, a, b, c)
	ctx := testCtx(t, 20*time.Second)

	first := cl.Go(ctx, "Svc.Echo", []byte("first"), new([]byte), nil)
	require.Eventually(t, func() bool { return a.svc.calls.Load() == 1 }, 5*time.Second, time.Millisecond)

	const n, size = 24, 1 << 20
	type call struct {
		idempotent bool
		msg        []byte
		reply      []byte
		c          *epollbatch.Call
	}
	calls := make([]*call, n)
	for i := range calls {
		k := &call{idempotent: i%2 == 1, msg: make([]byte, size)}
		copy(k.msg, fmt.Sprintf("call %d", i))
		cctx := ctx
		if k.idempotent {
			cctx = cluster.Idempotent(ctx)
		}
		k.c = cl.Go(cctx, "Svc.Echo", k.msg, &k.reply, nil)
		calls[i] = k
	}
	require.Eventually(t, func() bool { st, _ := stats(cl, a.ep); return st.InFlight == n+1 }, 5*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond) // the socket and the queue fill
	a.close()

	got := <-first.Done
	require.ErrorIs(t, got.Error, epollbatch.ErrConnLost, "the call the server was running")
	require.NotErrorIs(t, got.Error, epollbatch.ErrNotSent)
	var moved, lost, idemOK int
	for i, k := range calls {
		select {
		case <-k.c.Done:
		case <-time.After(10 * time.Second):
			t.Fatalf("call %d did not end", i)
		}
		require.NotErrorIs(t, k.c.Error, epollbatch.ErrNotSent, "call %d: a call not sent reached the caller", i)
		switch {
		case k.c.Error == nil:
			require.Equal(t, k.msg, k.reply, "call %d", i)
			if k.idempotent {
				idemOK++
			} else {
				moved++
			}
		case k.idempotent:
			t.Fatalf("idempotent call %d failed: %v", i, k.c.Error)
		default:
			require.ErrorIs(t, k.c.Error, epollbatch.ErrConnLost, "call %d", i)
			lost++
		}
	}
	require.Equal(t, n/2, idemOK, "idempotent calls that succeeded")
	require.Positive(t, moved, "no call queued but unsent went elsewhere")
	require.EqualValues(t, 1, a.svc.calls.Load(), "the dead server ran more than the call it read")
	require.EqualValues(t, moved+idemOK, b.svc.calls.Load()+c.svc.calls.Load(), "each call that succeeded ran once, elsewhere")
	st, _ := stats(cl, a.ep)
	require.NotEqual(t, cluster.StateUp, st.State)
	require.Positive(t, st.Failures)
	t.Logf("of %d non-idempotent calls, %d moved and succeeded, %d lost", n/2, moved, lost)
}

// A slow server (50 ms a call, against a few milliseconds at most for the
// other two, even under the race detector on a busy machine) gets a third
// of the calls under RoundRobin, which does not look at it, and clearly
// fewer under P2C, which sees its calls in flight pile up. (P2C keeps
// about as many calls in flight on each server, so the slow one's share
// is about fast latency / (fast latency + 2 × 50 ms): under a tenth as
// long as the fast calls take under 10 ms.)
func TestP2CAvoidsSlowServer(t *testing.T) {
	share := func(t *testing.T, b cluster.Balancer, total int64) float64 {
		slow := startServer(t, "", &Svc{delay: 50 * time.Millisecond})
		f1, f2 := startServer(t, "", nil), startServer(t, "", nil)
		cl := dial(t, endpoints(slow, f1, f2), cluster.WithBalancer(b))
		waitUp(t, cl, slow, f1, f2)
		ctx := testCtx(t, 30*time.Second)
		var left atomic.Int64
		left.Store(total)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for left.Add(-1) >= 0 {
					if err := echo(ctx, cl, "x"); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		s, all := slow.svc.calls.Load(), slow.svc.calls.Load()+f1.svc.calls.Load()+f2.svc.calls.Load()
		require.EqualValues(t, total, all)
		return float64(s) / float64(all)
	}
	rr := share(t, cluster.RoundRobin(), 150)
	p2c := share(t, cluster.P2C(), 400)
	t.Logf("the slow server's share: %.3f with RoundRobin, %.3f with P2C", rr, p2c)
	require.GreaterOrEqual(t, rr, 0.3, "RoundRobin gives each server a third")
	require.Less(t, p2c, 0.2, "P2C did not steer calls away from the slow server")
}

// An endpoint whose dials are refused backs off (its next dial is no more
// than WithBackoff's max away), takes no call, and comes back once its
// server starts.
func TestBackoffRetriesRefusedEndpoint(t *testing.T) {
	a := startServer(t, "", nil)
	x := cluster.Endpoint{Network: "tcp", Addr: freeAddr(t)}
	const max = 50 * time.Millisecond
	cl := dial(t, []cluster.Endpoint{a.ep, x}, cluster.WithBackoff(5*time.Millisecond, max))
	waitUp(t, cl, a)
	waitState(t, cl, x, cluster.StateBackoff)
	st, _ := stats(cl, x)
	require.ErrorIs(t, st.LastError, syscall.ECONNREFUSED)
	if !st.RetryAt.IsZero() {
		require.LessOrEqual(t, time.Until(st.RetryAt), max)
	}
	ctx := testCtx(t, 10*time.Second)
	for i := range 20 {
		require.NoError(t, echo(ctx, cl, fmt.Sprint(i)))
	}
	st, _ = stats(cl, x)
	require.Zero(t, st.Calls, "calls went to an endpoint backing off")

	srv := startServer(t, x.Addr, nil) // the port was free: it should still be
	start := time.Now()
	waitState(t, cl, x, cluster.StateUp)
	require.Less(t, time.Since(start), 2*time.Second)
	for i := range 20 {
		require.NoError(t, echo(ctx, cl, fmt.Sprint(i)))
	}
	require.NotZero(t, srv.svc.calls.Load(), "the endpoint came back but got no call")

	// It dies, backs off, and comes back again on the same address.
	srv.close()
	require.Eventually(t, func() bool {
		echo(ctx, cl, "x") // a call finds it dead, or Stats does
		st, _ := stats(cl, x)
		return st.State == cluster.StateBackoff
	}, 5*time.Second, time.Millisecond)
	srv = startServer(t, x.Addr, nil)
	waitState(t, cl, x, cluster.StateUp)
	for i := range 20 {
		require.NoError(t, echo(ctx, cl, fmt.Sprint(i)))
	}
	require.NotZero(t, srv.svc.calls.Load())
}

// silentServer accepts connections and reads them, and never answers:
// a server that hung, or a host gone without a word. stop stops it (so
// does the test's end).
func silentServer(t *testing.T) (ep cluster.Endpoint, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 4096)
				for {
					if _, err := nc.Read(buf); err != nil {
						return
					}
				}
			})
		}
	})
	stop = func() {
		ln.Close()
		mu.Lock()
		for _, nc := range conns {
			nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
	t.Cleanup(stop)
	return cluster.Endpoint{Network: "tcp", Addr: ln.Addr().String()}, stop
}

// v4's pings find a server that stopped answering dead: it leaves the
// choice without any call having to fail on it first; and idempotent
// calls that were sent to it before that go elsewhere.
func TestPingsFindSilentServerDead(t *testing.T) {
	silent, _ := silentServer(t)
	a := startServer(t, "", nil)
	cl := dial(t, []cluster.Endpoint{silent, a.ep},
		cluster.WithClientOptions(epollbatch.WithPingInterval(20*time.Millisecond)),
		cluster.WithBackoff(time.Second, time.Second))
	waitUp(t, cl, a)
	waitState(t, cl, silent, cluster.StateUp) // the TCP connection is made
	start := time.Now()
	waitState(t, cl, silent, cluster.StateBackoff)
	t.Logf("found dead after %v", time.Since(start))
	st, _ := stats(cl, silent)
	require.Zero(t, st.Calls)

	// Within the backoff (1 s) every call goes to a.
	ctx := cluster.Idempotent(testCtx(t, 10*time.Second))
	for i := range 10 {
		require.NoError(t, echo(ctx, cl, fmt.Sprint(i)))
	}
	require.EqualValues(t, 10, a.svc.calls.Load())
}

// clientGoroutines returns the stacks of the goroutines running code of
// package cluster (but for the tests' own) or the clients' shared
// reactors. A goroutine that is only returning from its own function
// (runnable, that function its only frame: it called its WaitGroup's
// Done, which is what Close waited for) is not counted.
func clientGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if !(strings.Contains(g, "v4-epoll-batch/cluster.") && !strings.Contains(g, "cluster_test.") ||
			strings.Contains(g, "created by github.com/rpcsteps/rpcsteps/v4-epoll-batch.(*sharedLoops).acquire")) {
			continue
		}
		lines := strings.Split(strings.TrimSpace(g), "\n")
		// "goroutine N [runnable]:", the function, its file, "created by ...", its file.
		if len(lines) == 5 && strings.Contains(lines[0], "[runnable]") && strings.HasPrefix(lines[3], "created by ") {
			continue
		}
		found = append(found, g)
	}
	return found
}

// readAndClose is a server that reads one request from each connection
// and closes it: every call sent to it may have run, and fails.
func readAndClose(t *testing.T, reads *atomic.Int64) cluster.Endpoint {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				var f protocol.Frame
				if _, err := protocol.ReadFrame(bufio.NewReader(nc), 0, &f, nil); err == nil && f.Type == protocol.TypeRequest {
					reads.Add(1)
				}
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return cluster.Endpoint{Network: "tcp", Addr: ln.Addr().String()}
}

// A call that reached a server which then died is not sent again, and
// fails with ErrConnLost; an idempotent one is sent to each other server
// once, and no more, and fails with ErrConnLost once all have failed it.
func TestConnLostIsRetriedOnlyWhenIdempotent(t *testing.T) {
	var reads atomic.Int64
	eps := []cluster.Endpoint{readAndClose(t, &reads), readAndClose(t, &reads), readAndClose(t, &reads)}
	cl := dial(t, eps, cluster.WithBackoff(time.Hour, time.Hour)) // no endpoint comes back within the test
	for _, ep := range eps {
		waitState(t, cl, ep, cluster.StateUp)
	}
	ctx := testCtx(t, 10*time.Second)
	err := echo(ctx, cl, "once")
	require.ErrorIs(t, err, epollbatch.ErrConnLost)
	require.NotErrorIs(t, err, epollbatch.ErrNotSent)
	require.NotErrorIs(t, err, cluster.ErrNoEndpoints)
	require.EqualValues(t, 1, reads.Load(), "a call that may have run was sent again")

	err = echo(cluster.Idempotent(ctx), cl, "thrice")
	require.ErrorIs(t, err, epollbatch.ErrConnLost, "it may have run: that is what the caller must hear")
	require.NotErrorIs(t, err, epollbatch.ErrNotSent)
	require.EqualValues(t, 3, reads.Load(), "an idempotent call goes to each other server once")

	// Now none is up: fail fast, not sent.
	start := time.Now()
	err = echo(ctx, cl, "none")
	require.ErrorIs(t, err, cluster.ErrNoEndpoints)
	require.ErrorIs(t, err, epollbatch.ErrNotSent)
	require.NotErrorIs(t, err, epollbatch.ErrConnLost)
	require.Less(t, time.Since(start), time.Second)
	require.EqualValues(t, 3, reads.Load())
	for _, ep := range eps {
		st, _ := stats(cl, ep)
		require.Equal(t, cluster.StateBackoff, st.State)
		require.EqualValues(t, 1, st.Failures)
		require.ErrorIs(t, st.LastError, epollbatch.ErrConnLost, "Stats says why the endpoint is down")
	}
}

// An idempotent call goes to each endpoint once at most, even one that
// is up again by the time the call is sent again: the Balancer, which
// here waits for the first endpoint to come back and would pick it,
// is not offered it.
func TestIdempotentTriesEachEndpointOnce(t *testing.T) {
	var readsA, readsB atomic.Int64
	a, b := readAndClose(t, &readsA), readAndClose(t, &readsB)
	var cl atomic.Pointer[cluster.Client]
	var picks atomic.Int64
	var offered [][]cluster.Endpoint
	var mu sync.Mutex
	bal := cluster.BalancerFunc(func(_ context.Context, _ string, up []*cluster.Backend) int {
		var eps []cluster.Endpoint
		for _, b := range up {
			eps = append(eps, b.Endpoint())
		}
		mu.Lock()
		offered = append(offered, eps)
		mu.Unlock()
		if picks.Add(1) > 1 { // a's connection failed: wait until it is up again
			require.Eventually(t, func() bool { st, _ := stats(cl.Load(), a); return st.State == cluster.StateUp },
				5*time.Second, time.Millisecond)
		}
		for i, b := range up {
			if b.Endpoint() == a {
				return i
			}
		}
		return 0
	})
	c := dial(t, []cluster.Endpoint{a, b}, cluster.WithBalancer(bal), cluster.WithBackoff(time.Millisecond, time.Millisecond))
	cl.Store(c)
	waitState(t, c, a, cluster.StateUp)
	waitState(t, c, b, cluster.StateUp)
	err := echo(cluster.Idempotent(testCtx(t, 10*time.Second)), c, "x")
	require.ErrorIs(t, err, epollbatch.ErrConnLost)
	require.EqualValues(t, 1, readsA.Load(), "sent twice to the same server")
	require.EqualValues(t, 1, readsB.Load())
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, offered, 2)
	require.ElementsMatch(t, []cluster.Endpoint{a, b}, offered[0])
	require.Equal(t, []cluster.Endpoint{b}, offered[1], "the retry is offered only the endpoint not tried")
}

// An endpoint the resolver no longer lists takes no new call, shows as
// draining while its call in flight runs, and is closed once that call
// has ended, which it does with its reply.
func TestRemovedEndpointDrains(t *testing.T) {
	hold := make(chan struct{})
	a, b := startServer(t, "", &Svc{hold: hold}), startServer(t, "", nil)
	d := newDriven()
	cl := dialDriven(t, d, endpoints(a), cluster.WithBalancer(cluster.RoundRobin()))
	waitUp(t, cl, a)
	ctx := testCtx(t, 10*time.Second)
	var reply []byte
	call := cl.Go(ctx, "Svc.Echo", []byte("held"), &reply, nil)
	require.Eventually(t, func() bool { return a.svc.calls.Load() == 1 }, 5*time.Second, time.Millisecond)

	d.set(t, b.ep)
	st, ok := stats(cl, a.ep)
	require.True(t, ok, "a draining endpoint is still reported")
	require.Equal(t, cluster.StateDraining, st.State)
	require.Equal(t, 1, st.InFlight)
	waitUp(t, cl, b)
	for range 5 {
		require.NoError(t, echo(ctx, cl, "b"))
	}
	require.EqualValues(t, 5, b.svc.calls.Load())
	require.EqualValues(t, 1, a.svc.calls.Load(), "a call went to an endpoint no longer listed")
	time.Sleep(20 * time.Millisecond)
	_, ok = stats(cl, a.ep)
	require.True(t, ok, "closed with a call in flight")

	close(hold)
	call = <-call.Done
	require.NoError(t, call.Error, "the call in flight on a removed endpoint ends as it would have")
	require.Equal(t, "held", string(reply))
	require.Eventually(t, func() bool { _, ok := stats(cl, a.ep); return !ok }, 5*time.Second, time.Millisecond,
		"the drained endpoint was not closed")
	require.Eventually(t, func() bool { return a.srv.Stats().Conns == 0 }, 5*time.Second, time.Millisecond,
		"its connection is still open")
}

// A call made while no endpoint is up waits for one being dialed for the
// first time, and fails fast once none is; a call with a short ctx stops
// waiting with its ctx.
func TestNoEndpointsUp(t *testing.T) {
	refused := cluster.Endpoint{Network: "tcp", Addr: freeAddr(t)}
	cl := dial(t, []cluster.Endpoint{refused}, cluster.WithBackoff(time.Hour, time.Hour))
	ctx := testCtx(t, 10*time.Second)
	err := echo(ctx, cl, "x") // waits for the first dial, which fails
	require.ErrorIs(t, err, cluster.ErrNoEndpoints)
	require.ErrorIs(t, err, epollbatch.ErrNotSent)
	require.ErrorContains(t, err, "refused")
	start := time.Now()
	require.ErrorIs(t, cl.Notify(ctx, "Svc.Echo", []byte("x")), cluster.ErrNoEndpoints)
	call := <-cl.Go(ctx, "Svc.Echo", []byte("x"), new([]byte), nil).Done
	require.ErrorIs(t, call.Error, cluster.ErrNoEndpoints)
	require.Less(t, time.Since(start), 100*time.Millisecond, "no endpoint up: calls fail fast")

	// An endpoint whose first dial hangs (a TLS handshake with a server
	// that never speaks): a call waits for it as long as its ctx allows.
	silent, _ := silentServer(t)
	cl2 := dial(t, []cluster.Endpoint{silent}, cluster.WithClientOptions(epollbatch.WithTLSConfig(&tls.Config{})))
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = echo(short, cl2, "x")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, cluster.ErrNoEndpoints)
	require.ErrorIs(t, err, epollbatch.ErrNotSent)
	st, _ := stats(cl2, silent)
	require.Equal(t, cluster.StateConnecting, st.State)
}

// Close ends the calls in flight and those waiting for an endpoint at
// once, stops a dial in progress, leaves no goroutine behind, and later
// calls fail with ErrShutdown.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	a := startServer(t, "", &Svc{hold: make(chan struct{})})
	silent, stopSilent := silentServer(t)

	cl, err := cluster.Dial(cluster.Static{a.ep, {Network: "tcp", Addr: freeAddr(t)}})
	require.NoError(t, err)
	waitState(t, cl, a.ep, cluster.StateUp)
	inFlight := cl.Go(context.Background(), "Svc.Echo", []byte("x"), new([]byte), nil)
	require.Eventually(t, func() bool { return a.svc.calls.Load() == 1 }, 5*time.Second, time.Millisecond)

	// A second client whose only endpoint is on a dial that hangs, and a
	// call waiting for it.
	cl2, err := cluster.Dial(cluster.Static{silent}, cluster.WithClientOptions(epollbatch.WithTLSConfig(&tls.Config{})))
	require.NoError(t, err)
	waiting := cl2.Go(context.Background(), "Svc.Echo", []byte("x"), new([]byte), nil)

	start := time.Now()
	require.NoError(t, cl.Close())
	require.NoError(t, cl2.Close())
	require.Less(t, time.Since(start), time.Second, "Close waited")
	var left []string
	for _, g := range clientGoroutines() {
		if !strings.Contains(g, "created by github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster.(*Client).Go ") {
			left = append(left, g)
		}
	}
	require.Empty(t, left, "goroutines of the clients left when Close returned")
	for _, call := range []*epollbatch.Call{inFlight, waiting} {
		select {
		case call = <-call.Done:
			require.ErrorIs(t, call.Error, epollbatch.ErrShutdown)
		case <-time.After(time.Second):
			t.Fatal("a call did not end with Close")
		}
	}
	// Close does not wait for the goroutines of Go calls to deliver.
	require.Empty(t, clientGoroutines(), "goroutines of Go calls left once they delivered")
	err = echo(context.Background(), cl, "x")
	require.ErrorIs(t, err, epollbatch.ErrShutdown)
	require.ErrorIs(t, err, epollbatch.ErrNotSent)
	require.NoError(t, cl.Close(), "a second Close")
	require.Empty(t, cl.Stats())
	a.close()
	stopSilent()
	goleak.VerifyNone(t, before)
}
