package shortconn

import (
	"bufio"
	"context"
	"net"
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

// The lesson of v1: every call is a connection of its own.
func TestOneConnectionPerCall(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &contracttest.CountingListener{Listener: inner}
	addr := serve(t, newEchoServer(t), ln)

	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	require.Zero(t, ln.Accepted(), "Dial connects lazily")
	var reply []byte
	for i := range 10 {
		require.NoError(t, c.Call(context.Background(), "Echo.Echo", []byte{byte(i)}, &reply))
		require.Equal(t, []byte{byte(i)}, reply)
	}
	require.NoError(t, c.Notify(context.Background(), "Echo.Echo", []byte("x")))
	require.Eventually(t, func() bool { return ln.Accepted() == 11 }, 5*time.Second, time.Millisecond)
}

func rawRequest(t *testing.T, seq uint64) []byte {
	t.Helper()
	b, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, seq, codec.Raw, "Echo.Echo", []byte("hi"))
	require.NoError(t, err)
	return b
}

// A v1 server answers the first request of a connection and closes it.
func TestServerClosesAfterOneReply(t *testing.T) {
	addr := serve(t, newEchoServer(t), nil)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write(append(rawRequest(t, 1), rawRequest(t, 2)...))
	require.NoError(t, err)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	var f protocol.Frame
	_, err = protocol.ReadFrame(br, 0, &f, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(1), f.Seq)
	_, err = protocol.ReadFrame(br, 0, &f, nil)
	require.Error(t, err, "no second reply: the connection is closed")
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
		for _, active := range s.conns {
			if active {
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
	c, err := Dial("tcp", "127.0.0.1:1")
	require.NoError(t, err)
	c.Close()
	require.PanicsWithValue(t, "shortconn: Go: done channel is unbuffered", func() {
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
	o = newClientOptions([]ClientOption{WithCodec(codec.JSON), WithMaxFrameSize(100), WithDialTimeout(time.Second), WithCodec(nil), WithMaxFrameSize(-1)})
	require.Equal(t, codec.JSON, o.codec)
	require.Equal(t, protocol.DefaultMaxFrameSize, o.maxFrameSize)
	require.Equal(t, time.Second, o.dialTimeout)

	so := newServerOptions([]ServerOption{WithMaxFrameSize(100), WithIdleTimeout(time.Second), WithLogger(nil)})
	require.Equal(t, 100, so.maxFrameSize)
	require.Equal(t, time.Second, so.idleTimeout)
	require.NotNil(t, so.logger)
}
