package contracttest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// After Close, calls fail with ErrShutdown, those in flight at once; Close
// may be called again.
func testClientClose(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	add(t, c, 1, 2)

	var r1, r2 string
	viaGo := c.Go(context.Background(), "Blocker.Hold", "go", &r1)
	viaCall := callAsync(context.Background(), c, "Blocker.Hold", "call", &r2)
	recv(t, e.svc.blocker.Entered, "a method's start")
	recv(t, e.svc.blocker.Entered, "a method's start")

	require.NotPanics(t, func() { _ = c.Close() })
	closed := time.Now()
	require.ErrorIs(t, recv(t, viaGo, "the call by Go in flight"), v.ErrShutdown)
	require.ErrorIs(t, recv(t, viaCall, "the call by Call in flight"), v.ErrShutdown)
	require.Less(t, time.Since(closed), time.Second, "calls in flight did not complete at once")
	require.Empty(t, r1)
	require.Empty(t, r2)

	var n int
	require.ErrorIs(t, c.Call(context.Background(), "Arith.Add", Args{1, 2}, &n), v.ErrShutdown)
	require.ErrorIs(t, recv(t, c.Go(context.Background(), "Arith.Add", Args{1, 2}, &n), "Go after Close"), v.ErrShutdown)
	require.ErrorIs(t, c.Notify(context.Background(), "Recorder.Record", "x"), v.ErrShutdown)
	require.NotPanics(t, func() { _ = c.Close() }, "a second Close")
	require.Zero(t, n)
}

// Serve returns ErrServerClosed after Shutdown or Close; both may be called
// again.
func testServeReturnsErrServerClosed(t *testing.T, v Version) {
	for _, stop := range []string{"Shutdown", "Close"} {
		t.Run(stop, func(t *testing.T) {
			e := start(t, v, Options{})
			add(t, e.dial(Options{}), 1, 2)
			ctx, cancel := context.WithTimeout(context.Background(), guard)
			defer cancel()
			if stop == "Shutdown" {
				require.NoError(t, e.srv.Shutdown(ctx))
			} else {
				_ = e.srv.Close()
			}
			require.ErrorIs(t, e.served(), v.ErrServerClosed)
			require.NotPanics(t, func() {
				_ = e.srv.Shutdown(ctx)
				_ = e.srv.Close()
				_ = e.srv.Shutdown(ctx)
			})
		})
	}
}

// Shutdown and Close before Serve: a later Serve returns ErrServerClosed at
// once.
func testStopBeforeServe(t *testing.T, v Version) {
	for _, order := range [][]string{{"Shutdown"}, {"Close"}, {"Shutdown", "Close", "Shutdown"}, {"Close", "Shutdown", "Close"}} {
		t.Run(strings.Join(order, "-"), func(t *testing.T) {
			srv := v.NewServer(Options{Logger: (&logBuffer{}).logger()})
			ctx, cancel := context.WithTimeout(context.Background(), guard)
			defer cancel()
			for i, op := range order {
				if op == "Shutdown" {
					err := srv.Shutdown(ctx)
					if i == 0 {
						require.NoError(t, err, "Shutdown before Serve")
					}
				} else {
					_ = srv.Close()
				}
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			select {
			case err := <-served:
				require.ErrorIs(t, err, v.ErrServerClosed)
			case <-time.After(time.Second):
				_ = srv.Close()
				recv(t, served, "Serve after Close")
				t.Fatal("Serve after " + order[len(order)-1] + " did not return at once")
			}
		})
	}
}

// refused checks that dials to addr fail within guard: the listener is
// closed.
func refused(t *testing.T, addr string) {
	t.Helper()
	require.Eventually(t, func() bool {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		conn.Close()
		return false
	}, guard, 5*time.Millisecond, "the listener is still open")
}

// Shutdown closes the listener at once, lets the call in flight finish with
// its reply, then returns nil.
func testShutdownWaitsForCallInFlight(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	var reply string
	call := c.Go(context.Background(), "Blocker.Hold", "inflight", &reply)
	recv(t, e.svc.blocker.Entered, "the method's start")

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		defer cancel()
		shut <- e.srv.Shutdown(ctx)
	}()
	refused(t, e.addr)
	none(t, shut, "Shutdown returned with a call in flight")
	none(t, call, "the call completed before its method returned")

	e.svc.blocker.Release()
	require.NoError(t, recv(t, call, "the call in flight"))
	require.Equal(t, "held:inflight", reply)
	require.NoError(t, recv(t, shut, "Shutdown"))
	require.ErrorIs(t, e.served(), v.ErrServerClosed)
}

// Shutdown closes idle connections and returns nil.
func testShutdownClosesIdleConns(t *testing.T, v Version) {
	e := start(t, v, Options{})
	add(t, e.dial(Options{}), 1, 2) // from v2 on, a pooled idle connection
	conn := e.raw()                 // connected, sent nothing

	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	require.NoError(t, e.srv.Shutdown(ctx))
	expectClosed(t, conn, "an idle connection at Shutdown")
	require.ErrorIs(t, e.served(), v.ErrServerClosed)
}

// A Shutdown whose ctx ends first returns ctx's error and cancels the ctx of
// the method in flight, whose call fails.
func testShutdownCtxExpires(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	var reply string
	call := c.Go(context.Background(), "Blocker.Wait", "inflight", &reply)
	recv(t, e.svc.blocker.Entered, "the method's start")

	shut := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	go func() { shut <- e.srv.Shutdown(ctx) }()
	require.ErrorIs(t, recv(t, shut, "Shutdown"), context.DeadlineExceeded)
	require.Error(t, recv(t, e.svc.blocker.CtxErr, "the end of the method's ctx"))
	require.Error(t, recv(t, call, "the call in flight"))
	require.Empty(t, reply)
	require.ErrorIs(t, e.served(), v.ErrServerClosed)
}

// Close with calls in flight: they fail (the connection breaks), the
// method's ctx is cancelled, Serve returns. A new server on the same
// address serves the same client's next call.
func testCloseWithCallsInFlight(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	var r1, r2 string
	held := c.Go(context.Background(), "Blocker.Hold", "held", &r1) // ignores its ctx
	waiting := c.Go(context.Background(), "Blocker.Wait", "waiting", &r2)
	recv(t, e.svc.blocker.Entered, "a method's start")
	recv(t, e.svc.blocker.Entered, "a method's start")

	_ = e.srv.Close()
	require.Error(t, recv(t, held, "a call in flight at Close"))
	require.Error(t, recv(t, waiting, "a call in flight at Close"))
	require.Error(t, recv(t, e.svc.blocker.CtxErr, "the end of the method's ctx at Close"))
	require.ErrorIs(t, e.served(), v.ErrServerClosed, "with a method still running")
	require.Empty(t, r1)
	require.Empty(t, r2)

	ln, err := net.Listen("tcp", e.addr)
	require.NoError(t, err, "listening again on %s", e.addr)
	startOn(t, v, Options{}, ln)
	add(t, c, 2, 3) // later calls connect again
}

// Close closes every connection: idle, and in the middle of a frame.
func testCloseClosesConns(t *testing.T, v Version) {
	e := start(t, v, Options{})
	idle := e.raw()
	partial := e.raw()
	req, err := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeRequest, Codec: 2, Seq: 1}, "Arith.Add", "", make([]byte, 100))
	require.NoError(t, err)
	_, err = partial.Write(req[:protocol.HeaderSize+5])
	require.NoError(t, err)
	add(t, e.dial(Options{}), 1, 2) // the raw connections have been accepted by now, most likely

	_ = e.srv.Close()
	expectClosed(t, idle, "an idle connection at Close")
	expectClosed(t, partial, "a connection inside a frame at Close")
	require.ErrorIs(t, e.served(), v.ErrServerClosed)
}

// Dial fails at once on an unknown network.
func testDialUnknownNetwork(t *testing.T, v Version) {
	began := time.Now()
	c, err := v.Dial("bogus", "127.0.0.1:1", Options{})
	if err == nil {
		c.Close()
	}
	require.Error(t, err)
	require.Less(t, time.Since(began), time.Second)
}
