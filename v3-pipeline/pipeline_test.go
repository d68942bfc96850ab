package pipeline

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rpcsteps/rpcsteps/internal/contracttest"
	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type Echo struct{}

func (Echo) Echo(args []byte, reply *[]byte) error {
	*reply = append((*reply)[:0], args...)
	return nil
}

// serve starts s on a loopback port; the cleanup closes s and waits for
// Serve to return.
func serve(t *testing.T, s *Server, ln net.Listener) string {
	t.Helper()
	if ln == nil {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		require.ErrorIs(t, <-served, ErrServerClosed)
	})
	return ln.Addr().String()
}

func newEchoServer(t *testing.T, opts ...ServerOption) *Server {
	s := NewServer(opts...)
	require.NoError(t, s.Register(Echo{}))
	return s
}

// The lesson of v3: every call, at once, over one connection.
func TestOneConnectionForAll(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &contracttest.CountingListener{Listener: inner}
	addr := serve(t, newEchoServer(t), ln)

	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	const calls = 10_000
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			want := []byte(fmt.Sprint("call ", i))
			var reply []byte
			if err := c.Call(context.Background(), "Echo.Echo", want, &reply); err != nil {
				t.Error(err)
				return
			}
			if !bytes.Equal(reply, want) {
				t.Errorf("call %d got the reply %q", i, reply)
			}
		})
	}
	wg.Wait()
	require.EqualValues(t, 1, ln.Accepted())
	st := c.Stats()
	require.Equal(t, 1, st.Conns)
	require.Zero(t, st.Pending)
	require.EqualValues(t, 1, st.Dials)
	// The writer counts a write after it returns; the replies may be faster.
	require.Eventually(t, func() bool { return c.Stats().Frames == calls }, 5*time.Second, time.Millisecond)
	st = c.Stats()
	t.Logf("client: %d frames in %d writes", st.Frames, st.Flushes)
}

func rawRequest(t *testing.T, seq uint64) []byte {
	t.Helper()
	b, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, seq, codec.Raw, "Echo.Echo", []byte("hi"))
	require.NoError(t, err)
	return b
}

// A v3 server answers every request of a connection, whatever their
// number and order.
func TestServerServesManyRequests(t *testing.T) {
	addr := serve(t, newEchoServer(t), nil)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	var reqs []byte
	for seq := range uint64(50) {
		reqs = append(reqs, rawRequest(t, seq+1)...)
	}
	_, err = conn.Write(reqs)
	require.NoError(t, err)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	seen := map[uint64]bool{}
	var f protocol.Frame
	for range 50 {
		_, err = protocol.ReadFrame(br, 0, &f, nil)
		require.NoError(t, err)
		require.False(t, seen[f.Seq], "two replies to %d", f.Seq)
		seen[f.Seq] = true
	}
	require.Len(t, seen, 50)
}

// Shutdown waits for a request that has begun to arrive, and answers it.
func TestShutdownWaitsForPartialRequest(t *testing.T) {
	s := newEchoServer(t)
	addr := serve(t, s, nil)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	req := rawRequest(t, 5)
	_, err = conn.Write(req[:10])
	require.NoError(t, err)

	// Wait until the server has seen the first bytes.
	require.Eventually(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for sc := range s.conns {
			sc.mu.Lock()
			reading := sc.reading
			sc.mu.Unlock()
			if reading {
				return true
			}
		}
		return false
	}, 5*time.Second, time.Millisecond)

	shutdown := make(chan error, 1)
	go func() { shutdown <- s.Shutdown(context.Background()) }()
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned %v with a request half received", err)
	case <-time.After(50 * time.Millisecond):
	}
	_, err = conn.Write(req[10:])
	require.NoError(t, err)
	var f protocol.Frame
	_, err = protocol.ReadFrame(bufio.NewReader(conn), 0, &f, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(5), f.Seq)
	require.NoError(t, <-shutdown)
}

func TestGoDoneChannel(t *testing.T) {
	c, err := Dial("tcp", serve(t, newEchoServer(t), nil))
	require.NoError(t, err)
	c.Close()
	require.PanicsWithValue(t, "pipeline: Go: done channel is unbuffered", func() {
		c.Go(context.Background(), "Echo.Echo", []byte("x"), new([]byte), make(chan *Call))
	})
	call := c.Go(context.Background(), "Echo.Echo", []byte("x"), new([]byte), nil)
	require.Positive(t, cap(call.Done))
	require.ErrorIs(t, (<-call.Done).Error, ErrShutdown)
	require.Equal(t, "Echo.Echo", call.ServiceMethod)
}

func TestOptions(t *testing.T) {
	o := newClientOptions(nil)
	require.Equal(t, codec.Gob, o.codec)
	require.Equal(t, protocol.DefaultMaxFrameSize, o.maxFrameSize)
	require.Equal(t, DefaultDialTimeout, o.dialTimeout)
	require.Equal(t, 1, o.conns)
	require.Equal(t, DefaultPingInterval, o.pingInterval)
	require.Equal(t, DefaultMaxQueuedBytes, o.maxQueued)
	o = newClientOptions([]ClientOption{WithCodec(codec.JSON), WithMaxFrameSize(100), WithDialTimeout(time.Second), WithCodec(nil), WithMaxFrameSize(-1), WithConns(3), WithPingInterval(0), WithMaxQueuedBytes(10)})
	require.Equal(t, codec.JSON, o.codec)
	require.Equal(t, protocol.DefaultMaxFrameSize, o.maxFrameSize)
	require.Equal(t, time.Second, o.dialTimeout)
	require.Equal(t, 3, o.conns)
	require.Zero(t, o.pingInterval)
	require.Equal(t, 10, o.maxQueued)

	so := newServerOptions([]ServerOption{WithMaxFrameSize(100), WithIdleTimeout(time.Second), WithLogger(nil), WithMaxInFlight(7), WithMaxBytesInFlight(9)})
	require.Equal(t, 100, so.maxFrameSize)
	require.Equal(t, time.Second, so.idleTimeout)
	require.NotNil(t, so.logger)
	require.Equal(t, 7, so.maxInFlight)
	require.Equal(t, 9, so.maxBytesInFlight)
}
