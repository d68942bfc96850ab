package pipeline

import (
	"bufio"
	"context"

	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// Gate holds its Hold calls until released, and counts how many are inside.
type Gate struct {
	inside, peak atomic.Int64
	entered      chan struct{}
	release      chan struct{}
}

func newGate() *Gate { return &Gate{entered: make(chan struct{}, 1<<16), release: make(chan struct{})} }

// Hold waits for the gate to open.
func (g *Gate) Hold(_ int, reply *int) error {
	n := g.inside.Add(1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	g.entered <- struct{}{}
	<-g.release
	g.inside.Add(-1)
	*reply = int(n)
	return nil
}

func gateServer(t *testing.T, g *Gate, opts ...ServerOption) (*Server, string) {
	s := NewServer(opts...)
	require.NoError(t, s.Register(g))
	require.NoError(t, s.Register(Echo{}))
	return s, serve(t, s, nil)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	require.Eventually(t, cond, 5*time.Second, time.Millisecond, what)
}

// A slow method does not delay the others on the same connection: replies
// leave in the order they are ready.
func TestSlowMethodDoesNotBlockOthers(t *testing.T) {
	g := newGate()
	_, addr := gateServer(t, g)
	c, err := Dial("tcp", addr, WithCodec(codec.JSON))
	require.NoError(t, err)
	defer c.Close()

	slow := c.Go(context.Background(), "Gate.Hold", 0, new(int), nil)
	<-g.entered
	for i := range 100 {
		var reply []byte
		require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte{byte(i)}, &reply))
		require.Equal(t, []byte{byte(i)}, reply)
	}
	select {
	case <-slow.Done:
		t.Fatal("the slow call finished before its method")
	default:
	}
	close(g.release)
	require.NoError(t, (<-slow.Done).Error)
	require.EqualValues(t, 1, c.Stats().Dials, "all on one connection")
}

// Replies out of order reach the right calls.
func TestOutOfOrderReplies(t *testing.T) {
	g := newGate()
	_, addr := gateServer(t, g)
	c, err := Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	const n = 20
	calls := make([]*Call, n)
	replies := make([]int, n)
	for i := range calls {
		calls[i] = c.Go(context.Background(), "Gate.Hold", i, &replies[i], nil)
		<-g.entered // each enters in turn: call i sees i+1 inside
	}
	require.Equal(t, n, c.Stats().Pending)
	close(g.release) // all answer at once, in whatever order
	for i, call := range calls {
		require.NoError(t, (<-call.Done).Error)
		require.Equal(t, i+1, replies[i], "call %d got another call's reply", i)
	}
	require.Zero(t, c.Stats().Pending)
}

// Calls whose ctx ends leave nothing in the pending map, and their late
// replies are dropped.
func TestCancelLeavesNothingBehind(t *testing.T) {
	g := newGate()
	_, addr := gateServer(t, g)
	c, err := Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	tctx, tcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer tcancel()
	var calls []*Call
	replies := make([]int, 100)
	for i := range 50 {
		calls = append(calls, c.Go(ctx, "Gate.Hold", 0, &replies[i], nil))
		calls = append(calls, c.Go(tctx, "Gate.Hold", 0, &replies[50+i], nil))
	}
	for range 100 {
		<-g.entered
	}
	require.Equal(t, 100, c.Stats().Pending)
	cancel()
	for i, call := range calls {
		err := (<-call.Done).Error
		if i%2 == 0 {
			require.ErrorIs(t, err, context.Canceled)
		} else {
			require.ErrorIs(t, err, context.DeadlineExceeded)
		}
	}
	require.Zero(t, c.Stats().Pending, "cancelled calls left the pending map")

	close(g.release) // the 100 late replies arrive and are dropped
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("after"), &reply))
	for _, r := range replies {
		require.Zero(t, r, "a late reply was written")
	}
	require.Zero(t, c.Stats().Pending)
}

// When the connection breaks, every pending call fails at once; the next
// call connects again.
func TestConnectionLossFailsAllPending(t *testing.T) {
	g := newGate()
	s, addr := gateServer(t, g)
	c, err := Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	var calls []*Call
	for range 30 {
		calls = append(calls, c.Go(context.Background(), "Gate.Hold", 0, new(int), nil))
	}
	for range 30 {
		<-g.entered
	}
	start := time.Now()
	s.Close() // the connection breaks; the methods are still running
	for _, call := range calls {
		err := (<-call.Done).Error
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrShutdown, "the client is not closed")
	}
	require.Less(t, time.Since(start), 2*time.Second)
	require.Zero(t, c.Stats().Pending)
	close(g.release)
}

// A server restart is survived: the call after it connects again. While the
// server is down, dials back off: a call soon after a failed dial fails at
// once, with that dial's error.
func TestServerRestartAndBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	s1 := newEchoServer(t)
	done1 := make(chan error, 1)
	go func() { done1 <- s1.Serve(ln) }()
	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("1"), &reply))

	require.NoError(t, s1.Shutdown(context.Background()))
	require.ErrorIs(t, <-done1, ErrServerClosed)
	waitFor(t, "the client sees the close", func() bool { return c.Stats().Conns == 0 })

	err = c.Call(context.Background(), "Echo.Echo", []byte("2"), &reply)
	require.Error(t, err, "nothing listens")
	err = c.Call(context.Background(), "Echo.Echo", []byte("3"), &reply)
	require.ErrorContains(t, err, "next attempt in", "within the backoff, no dial")

	ln2, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	serve(t, newEchoServer(t), ln2)
	waitFor(t, "a call after the restart", func() bool {
		return c.Call(context.Background(), "Echo.Echo", []byte("4"), &reply) == nil
	})
	require.Equal(t, "4", string(reply))
	require.EqualValues(t, 2, c.Stats().Dials)
}

// Under load, the writers send many frames per write.
func TestFramesBatch(t *testing.T) {
	s, addr := gateServer(t, newGate())
	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	var wg sync.WaitGroup
	for range 256 {
		wg.Go(func() {
			for range 20 {
				var reply []byte
				require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("x"), &reply))
			}
		})
	}
	wg.Wait()
	// The writers count a write after it returns; the replies may be faster.
	waitFor(t, "the counters settle", func() bool { return c.Stats().Frames == 256*20 && s.Stats().Frames == 256*20 })
	cs, ss := c.Stats(), s.Stats()
	t.Logf("client: %d frames in %d writes; server: %d frames in %d writes", cs.Frames, cs.Flushes, ss.Frames, ss.Flushes)
	require.EqualValues(t, 256*20, cs.Frames)
	require.Less(t, cs.Flushes, cs.Frames, "client requests batch")
	require.Less(t, ss.Flushes, ss.Frames, "server replies batch")
}

// The server reads no more requests of a connection than WithMaxInFlight
// allows: the rest wait in the socket, not in goroutines.
func TestBackPressureMaxInFlight(t *testing.T) {
	g := newGate()
	_, addr := gateServer(t, g, WithMaxInFlight(4))
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	var reqs []byte
	for seq := range uint64(100) {
		b, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, seq, codec.Gob, "Gate.Hold", 0)
		require.NoError(t, err)
		reqs = append(reqs, b...)
	}
	_, err = conn.Write(reqs)
	require.NoError(t, err)
	for range 4 {
		<-g.entered
	}
	goroutines := runtime.NumGoroutine()
	time.Sleep(50 * time.Millisecond)
	require.EqualValues(t, 4, g.inside.Load(), "a fifth request was read")
	require.LessOrEqual(t, runtime.NumGoroutine(), goroutines)

	close(g.release)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	var f protocol.Frame
	for range 100 {
		_, err := protocol.ReadFrame(br, 0, &f, nil)
		require.NoError(t, err)
	}
	require.EqualValues(t, 4, g.peak.Load())
}

// An idle connection is pinged and stays; a server that stops answering
// is found dead, its calls fail, and the next call connects again.
func TestPingKeepsAndFindsDead(t *testing.T) {
	_, addr := gateServer(t, newGate(), WithIdleTimeout(200*time.Millisecond))
	c, err := Dial("tcp", addr, WithPingInterval(20*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	time.Sleep(400 * time.Millisecond) // twice the server's idle timeout
	st := c.Stats()
	require.Equal(t, 1, st.Conns, "pings kept the connection")
	require.EqualValues(t, 1, st.Dials)
	require.Zero(t, st.Timeouts)
	require.Greater(t, st.Frames, int64(5), "pings were sent")

	// A server that reads but never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		buf := make([]byte, 4096)
		for {
			if _, err := conn.Read(buf); err != nil {
				return
			}
		}
	})
	mute, err := Dial("tcp", ln.Addr().String(), WithPingInterval(20*time.Millisecond))
	require.NoError(t, err)
	defer mute.Close()
	call := mute.Go(context.Background(), "Echo.Echo", []byte("x"), new([]byte), nil)
	select {
	case call = <-call.Done:
		require.ErrorIs(t, call.Error, errNoPong)
	case <-time.After(5 * time.Second):
		t.Fatal("a silent server was not found dead")
	}
	require.EqualValues(t, 1, mute.Stats().Timeouts)
}

// Go never blocks its caller, even when the writer's queue is full because
// the server stopped reading.
func TestGoDoesNotBlockOnFullQueue(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			accepted <- conn
		}
	}()
	c, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw), WithMaxQueuedBytes(64<<10), WithPingInterval(0))
	require.NoError(t, err)
	defer c.Close()
	conn := <-accepted
	defer conn.Close() // never read: the socket buffers fill, then the queue

	payload := make([]byte, 32<<10)
	start := time.Now()
	var calls []*Call
	for range 500 { // 16 MiB: far more than the socket buffers and the queue
		calls = append(calls, c.Go(context.Background(), "Echo.Echo", payload, new([]byte), nil))
	}
	require.Less(t, time.Since(start), 2*time.Second, "Go blocked")

	// Call waits for room as long as its ctx allows.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = c.Call(ctx, "Echo.Echo", payload, new([]byte))
	require.ErrorIs(t, err, context.DeadlineExceeded)

	c.Close()
	for _, call := range calls {
		require.ErrorIs(t, (<-call.Done).Error, ErrShutdown)
	}
}

// What v3 still costs, counted: two goroutines per connection on each side
// (a reader and a writer), and one per request in flight on the server.
// Chapter 3 quotes the log line: go test -run TestGoroutineCost -v ./v3-pipeline
func TestGoroutineCost(t *testing.T) {
	g := newGate()
	_, addr := gateServer(t, g)
	const conns = 200
	settle := func() (int, uint64, uint64) {
		var ms runtime.MemStats
		var n int
		for range 50 { // goroutines that are ending take a moment
			runtime.GC()
			n = runtime.NumGoroutine()
			time.Sleep(2 * time.Millisecond)
			if runtime.NumGoroutine() == n {
				break
			}
		}
		runtime.ReadMemStats(&ms)
		return n, ms.HeapInuse, ms.StackInuse
	}
	base, heap0, stack0 := settle()
	clients := make([]*Client, conns)
	for i := range clients {
		c, err := Dial("tcp", addr, WithPingInterval(0))
		require.NoError(t, err)
		defer c.Close()
		clients[i] = c
	}
	waitFor(t, "the server's goroutines start", func() bool { return runtime.NumGoroutine() >= base+4*conns })
	idle, heap1, stack1 := settle()
	require.Equal(t, 4*conns, idle-base, "2 client + 2 server goroutines per connection")

	for _, c := range clients {
		c.Go(context.Background(), "Gate.Hold", 0, new(int), nil)
	}
	for range conns {
		<-g.entered
	}
	busy, _, _ := settle()
	require.Equal(t, conns, busy-idle, "one server goroutine per request in flight")
	t.Logf("%d connections: %d goroutines idle (%.1f per connection, both sides), +%d with one request in flight on each; per idle connection (both sides): heap %.1f KiB, goroutine stacks %.1f KiB",
		conns, idle-base, float64(idle-base)/conns, busy-idle,
		float64(int64(heap1)-int64(heap0))/conns/1024, float64(int64(stack1)-int64(stack0))/conns/1024)
	close(g.release)
}

// Callers that find a dead server while one of them redials read the
// slot's backoff under the lock (run with -race: it once read retryAt
// after unlocking, while the redial wrote it).
func TestConcurrentCallersDuringBackoff(t *testing.T) {
	s := newEchoServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	c, err := Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte("x"), &reply))
	s.Close() // from here every redial is refused
	require.ErrorIs(t, <-served, ErrServerClosed)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 300 {
				var reply []byte
				if c.Call(context.Background(), "Echo.Echo", []byte("x"), &reply) == nil {
					t.Error("a call succeeded with the server closed")
					return
				}
			}
		})
	}
	wg.Wait()
}
