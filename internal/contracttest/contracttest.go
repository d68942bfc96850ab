package contracttest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// guard bounds every wait for something that must happen: a test that
// reaches it has found a hang. It is generous, for -race on small machines;
// a passing test never waits for it.
const guard = 5 * time.Second

// quiet is how long a test watches for something that must not happen.
const quiet = 100 * time.Millisecond

// Run runs every contract test against v, each as a subtest with servers and
// clients of its own, all closed when it ends.
func Run(t *testing.T, v Version) {
	tests := []struct {
		name string
		fn   func(*testing.T, Version)
	}{
		// Calls: codecs, methods, registration, errors.
		{"Codecs", testCodecs},
		{"WireRequest", testWireRequest},
		{"ReplyCodecFollowsRequest", testReplyCodecFollowsRequest},
		{"Register", testRegister},
		{"RegisterWhileServing", testRegisterWhileServing},
		{"CtxDeadline", testCtxDeadline},
		{"MethodCtxEndsWithCallerDeadline", testMethodCtxEndsWithCallerDeadline},
		{"MethodCtxDeadlineOnTheWire", testMethodCtxDeadlineOnTheWire},
		{"ServerErrors", testServerErrors},
		{"Panic", testPanic},
		{"CallerCtxEnds", testCallerCtxEnds},
		{"GoDoesNotBlock", testGoDoesNotBlock},
		{"GoMany", testGoMany},
		{"GoCancelledCtx", testGoCancelledCtx},
		{"Notify", testNotify},
		{"NotifyHasNoReply", testNotifyHasNoReply},
		{"Concurrency", testConcurrency},

		// Client and server lifecycles.
		{"ClientClose", testClientClose},
		{"ServeReturnsErrServerClosed", testServeReturnsErrServerClosed},
		{"StopBeforeServe", testStopBeforeServe},
		{"ShutdownWaitsForCallInFlight", testShutdownWaitsForCallInFlight},
		{"ShutdownClosesIdleConns", testShutdownClosesIdleConns},
		{"ShutdownCtxExpires", testShutdownCtxExpires},
		{"CloseWithCallsInFlight", testCloseWithCallsInFlight},
		{"CloseClosesConns", testCloseClosesConns},
		{"DialUnknownNetwork", testDialUnknownNetwork},
		{"AcceptErrorsAreRetried", testAcceptErrorsAreRetried},
		{"ListenerClosedElsewhere", testListenerClosedElsewhere},

		// Limits and bad input.
		{"ClientMaxFrameSize", testClientMaxFrameSize},
		{"ServerMaxFrameSize", testServerMaxFrameSize},
		{"BadInput", testBadInput},
		{"UnknownCodec", testUnknownCodec},
		{"HalfClose", testHalfClose},
		{"Ping", testPing},
		{"IdleTimeout", testIdleTimeout},
		{"VanishMidFrame", testVanishMidFrame},
		{"NeverReads", testNeverReads},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, v) })
	}
}

// env is one test server, serving the services on 127.0.0.1.
type env struct {
	t    *testing.T
	v    Version
	srv  Server
	addr string
	svc  *services
	logs *logBuffer // the server's log, when the test gave no logger

	serveDone chan struct{} // closed when Serve returns
	serveErr  error         // what it returned
}

// start starts a server of v with options o on a new loopback port. It is
// closed, and Serve awaited, when the test ends.
func start(t *testing.T, v Version, o Options) *env {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return startOn(t, v, o, ln)
}

// startOn is start on a listener of the caller's.
func startOn(t *testing.T, v Version, o Options, ln net.Listener) *env {
	t.Helper()
	return launch(t, v, o, ln, true)
}

// startSilent is start without a logger, unless o has one.
func startSilent(t *testing.T, v Version, o Options) *env {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return launch(t, v, o, ln, false)
}

// launch starts a server on ln. With withLog and no logger in o, the server
// logs into e.logs.
func launch(t *testing.T, v Version, o Options, ln net.Listener, withLog bool) *env {
	t.Helper()
	e := &env{t: t, v: v, addr: ln.Addr().String(), svc: newServices(), logs: &logBuffer{}, serveDone: make(chan struct{})}
	if o.Logger == nil && withLog {
		o.Logger = e.logs.logger()
	}
	e.srv = v.NewServer(o)
	if err := e.svc.register(e.srv); err != nil {
		ln.Close()
		require.NoError(t, err, "registering the test services")
	}
	go func() {
		e.serveErr = e.srv.Serve(ln)
		close(e.serveDone)
	}()
	t.Cleanup(func() {
		_ = e.srv.Close()
		ln.Close() // in case Serve never took it
		select {
		case <-e.serveDone:
			if !errors.Is(e.serveErr, v.ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", e.serveErr)
			}
		case <-time.After(guard):
			t.Errorf("Serve did not return within %v of Close", guard)
		}
	})
	// Cleanups run last first: blocked methods are released before the
	// server is closed, and clients (dialled later) are closed before that.
	t.Cleanup(e.svc.blocker.Release)
	return e
}

// served waits for Serve to return and gives its error.
func (e *env) served() error {
	e.t.Helper()
	select {
	case <-e.serveDone:
		return e.serveErr
	case <-time.After(guard):
		e.t.Fatalf("Serve did not return within %v", guard)
		return nil
	}
}

// dial returns a client of e's server, closed when the test ends.
func (e *env) dial(o Options) Client {
	e.t.Helper()
	return dial(e.t, e.v, e.addr, o)
}

func dial(t *testing.T, v Version, addr string, o Options) Client {
	t.Helper()
	c, err := v.Dial("tcp", addr, o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// raw opens a plain TCP connection to e's server, closed when the test ends.
func (e *env) raw() *net.TCPConn {
	e.t.Helper()
	conn, err := net.Dial("tcp", e.addr)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

// add calls Arith.Add and checks the sum: the "server still serves" probe.
func add(t *testing.T, c Client, a, b int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var sum int
	require.NoError(t, c.Call(ctx, "Arith.Add", Args{a, b}, &sum))
	require.Equal(t, a+b, sum)
}

// callAsync runs c.Call in a goroutine and delivers its error.
func callAsync(ctx context.Context, c Client, method string, args, reply any) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- c.Call(ctx, method, args, reply) }()
	return ch
}

// recv waits up to guard for a value on ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(guard):
		t.Fatalf("%s: nothing within %v", what, guard)
		panic("unreachable")
	}
}

// none checks that nothing arrives on ch for a short while.
func none[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("%s: got %v", what, v)
	case <-time.After(quiet):
	}
}

// logBuffer collects a logger's output; it is safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// expectClosed reads conn until the peer closes it, which must happen within
// guard; the bytes read are returned.
func expectClosed(t *testing.T, conn net.Conn, what string) []byte {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(guard)))
	var got bytes.Buffer
	_, err := io.Copy(&got, conn) // nil at EOF; a reset is an error, and fine
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatalf("%s: the server did not close the connection within %v (read %d bytes)", what, guard, got.Len())
	}
	return got.Bytes()
}

// fakeServer accepts TCP connections and hands each to a function of the
// test's: a peer that misbehaves in ways a real server of the version does
// not. Everything is closed, and awaited, when the test ends.
type fakeServer struct {
	ln   net.Listener
	addr string
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

func startFake(t *testing.T, handle func(net.Conn)) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &fakeServer{ln: ln, addr: ln.Addr().String()}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			if f.closed {
				f.mu.Unlock()
				conn.Close()
				return
			}
			f.conns = append(f.conns, conn)
			f.wg.Add(1)
			f.mu.Unlock()
			go func() {
				defer f.wg.Done()
				handle(conn)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		f.closed = true
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}
