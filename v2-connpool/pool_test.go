package connpool

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/internal/contracttest"
	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Gate is a service whose Hold calls block until released, so that a test
// controls how long connections stay in use.
type Gate struct {
	inside, peak atomic.Int64
	entered      chan struct{}
	release      chan struct{}
}

func newGate() *Gate { return &Gate{entered: make(chan struct{}, 1024), release: make(chan struct{})} }

func (g *Gate) Hold(_ int, reply *int) error {
	n := g.inside.Add(1)
	for {
		p := g.peak.Load()
		if n <= p || g.peak.CompareAndSwap(p, n) {
			break
		}
	}
	g.entered <- struct{}{}
	<-g.release
	g.inside.Add(-1)
	*reply = int(n)
	return nil
}

func gateServer(t *testing.T, g *Gate, ln net.Listener, opts ...ServerOption) string {
	s := NewServer(opts...)
	require.NoError(t, s.Register(g))
	require.NoError(t, s.Register(Echo{}))
	return serve(t, s, ln)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 5*time.Second, time.Millisecond, what)
}

// Never more than MaxOpenConns connections, however many callers; the rest
// wait their turn and all complete.
func TestMaxOpenUnderConcurrency(t *testing.T) {
	g := newGate()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &contracttest.CountingListener{Listener: inner}
	addr := gateServer(t, g, ln)
	c, err := Dial("tcp", addr, WithMaxOpenConns(4))
	require.NoError(t, err)
	defer c.Close()

	const callers = 64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			var n int
			require.NoError(t, c.Call(context.Background(), "Gate.Hold", 0, &n))
		})
	}
	for range 4 {
		<-g.entered
	}
	waitFor(t, "60 callers waiting", func() bool { return c.Stats().Waiting == callers-4 })
	st := c.Stats()
	require.Equal(t, 4, st.Open)
	require.Equal(t, 4, st.InUse)
	require.Zero(t, st.Idle)
	close(g.release)
	wg.Wait()

	require.EqualValues(t, 4, g.peak.Load(), "calls in the server at once")
	require.EqualValues(t, 4, ln.Accepted(), "connections made")
	st = c.Stats()
	require.Equal(t, 4, st.Open)
	require.Equal(t, 4, st.Idle)
	require.Zero(t, st.Waiting)
	require.EqualValues(t, callers-4, st.WaitCount)
	require.Positive(t, st.WaitTotal)
}

// A call waiting for a connection gives up when its ctx ends, and leaves
// no trace in the pool.
func TestWaitHonoursCtx(t *testing.T) {
	g := newGate()
	addr := gateServer(t, g, nil)
	c, err := Dial("tcp", addr, WithMaxOpenConns(1))
	require.NoError(t, err)
	defer c.Close()

	held := make(chan error, 1)
	go func() { held <- c.Call(context.Background(), "Gate.Hold", 0, new(int)) }()
	<-g.entered

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = c.Call(ctx, "Echo.Echo", []byte("x"), new([]byte))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second)

	cctx, ccancel := context.WithCancel(context.Background())
	call := c.Go(cctx, "Echo.Echo", []byte("x"), new([]byte), nil)
	waitFor(t, "the Go call waits", func() bool { return c.Stats().Waiting == 1 })
	ccancel()
	require.ErrorIs(t, (<-call.Done).Error, context.Canceled)
	require.Zero(t, c.Stats().Waiting)

	close(g.release)
	require.NoError(t, <-held)
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("after"), &reply))
	require.Equal(t, "after", string(reply))
	require.Equal(t, 1, c.Stats().Open)
}

// Closing the client fails the calls waiting for a connection at once.
func TestCloseFailsWaiters(t *testing.T) {
	g := newGate()
	addr := gateServer(t, g, nil)
	c, err := Dial("tcp", addr, WithMaxOpenConns(1))
	require.NoError(t, err)
	held := c.Go(context.Background(), "Gate.Hold", 0, new(int), nil)
	<-g.entered
	waiting := c.Go(context.Background(), "Echo.Echo", []byte("x"), new([]byte), nil)
	waitFor(t, "a waiter", func() bool { return c.Stats().Waiting == 1 })
	require.NoError(t, c.Close())
	require.ErrorIs(t, (<-waiting.Done).Error, ErrShutdown)
	require.ErrorIs(t, (<-held.Done).Error, ErrShutdown)
	close(g.release)
}

// Connections idle for longer than the idle timeout are closed, by the
// client; MaxIdleConns bounds how many are kept.
func TestIdleEvictionAndMaxIdle(t *testing.T) {
	g := newGate()
	addr := gateServer(t, g, nil)
	c, err := Dial("tcp", addr, WithMaxOpenConns(6), WithMaxIdleConns(2), WithIdleConnTimeout(100*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()

	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() { require.NoError(t, c.Call(context.Background(), "Gate.Hold", 0, new(int))) })
	}
	for range 6 {
		<-g.entered
	}
	require.Equal(t, 6, c.Stats().Open)
	close(g.release)
	wg.Wait()
	st := c.Stats()
	require.Equal(t, 2, st.Idle, "max idle")
	require.Equal(t, 2, st.Open)
	require.EqualValues(t, 4, st.Evicted)

	waitFor(t, "idle connections evicted", func() bool { return c.Stats().Open == 0 })
	require.EqualValues(t, 6, c.Stats().Evicted)

	// and the pool works on.
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("again"), &reply))
	require.Equal(t, "again", string(reply))
}

// A server that closes idle connections (its idle timeout): the next call
// finds its pooled connection dead before writing, and succeeds on a new one.
func TestServerIdleCloseSurvived(t *testing.T) {
	addr := gateServer(t, newGate(), nil, WithIdleTimeout(30*time.Millisecond))
	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("1"), &reply))
	time.Sleep(150 * time.Millisecond) // the server closes the idle connection
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("2"), &reply))
	require.Equal(t, "2", string(reply))
	st := c.Stats()
	require.EqualValues(t, 2, st.Dials)
	require.EqualValues(t, 1, st.Discarded)
	require.Equal(t, 1, st.Open)
}

// A server restart: every pooled connection is dead; the next calls find
// that out without a failed call.
func TestServerRestartSurvived(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	s1 := NewServer()
	require.NoError(t, s1.Register(Echo{}))
	done1 := make(chan error, 1)
	go func() { done1 <- s1.Serve(ln) }()

	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("a"), new([]byte))) })
	}
	wg.Wait()
	opened := c.Stats().Open
	require.Positive(t, opened)

	require.NoError(t, s1.Shutdown(context.Background()))
	require.ErrorIs(t, <-done1, ErrServerClosed)
	ln2, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	addr2 := serve(t, newEchoServer(t), ln2)
	require.Equal(t, addr, addr2)

	// As many calls at once as there are pooled connections, so that each
	// dead one is taken, found dead, and replaced.
	var wg2 sync.WaitGroup
	for i := range opened {
		wg2.Go(func() {
			var reply []byte
			require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte{byte(i)}, &reply), "call %d after the restart", i)
			require.Equal(t, []byte{byte(i)}, reply)
		})
	}
	wg2.Wait()
	st := c.Stats()
	require.GreaterOrEqual(t, st.Discarded, int64(1))
	require.LessOrEqual(t, st.Open, opened)
}

// A request that may have reached the server is never sent twice: a server
// that reads a request and closes without answering costs the call, once.
func TestNoRetryOnceWritten(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var received atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				var f protocol.Frame
				for {
					if _, err := protocol.ReadFrame(br, 0, &f, nil); err != nil {
						return
					}
					if received.Add(1) == 1 {
						// The first request gets its reply; the second is
						// read and dropped with the connection.
						reply, _ := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeReply, Codec: f.Codec, Seq: f.Seq}, "", "", f.Body)
						conn.Write(reply)
						continue
					}
					return
				}
			})
		}
	})

	c, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("one"), &reply))
	err = c.Call(context.Background(), "Echo.Echo", []byte("two"), &reply)
	require.Error(t, err)
	require.True(t, errors.Is(err, io.EOF) || errors.Is(err, protocol.ErrTruncated), "%v", err)
	require.EqualValues(t, 2, received.Load(), "the second request was not sent again")
	require.EqualValues(t, 1, c.Stats().Dials)
}

// Closing a client closes all its connections: the server sees each one
// end, and none is left open.
func TestCloseReleasesConnections(t *testing.T) {
	g := newGate()
	s := NewServer()
	require.NoError(t, s.Register(g))
	require.NoError(t, s.Register(Echo{}))
	addr := serve(t, s, nil)
	c, err := Dial("tcp", addr, WithMaxOpenConns(8))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { require.NoError(t, c.Call(context.Background(), "Gate.Hold", 0, new(int))) })
	}
	for range 8 {
		<-g.entered
	}
	close(g.release)
	wg.Wait()
	serverConns := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns)
	}
	require.Equal(t, 8, serverConns())
	require.Equal(t, 8, c.Stats().Idle)
	require.NoError(t, c.Close())
	waitFor(t, "the server sees every connection closed", func() bool { return serverConns() == 0 })
	require.Zero(t, c.Stats().Open)
}
