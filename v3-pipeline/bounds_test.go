package pipeline

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// Big makes replies of the size asked for.
type Big struct{ made atomic.Int64 }

// Make replies n bytes.
func (b *Big) Make(n int, reply *[]byte) error {
	*reply = make([]byte, n)
	b.made.Add(1)
	return nil
}

func bigServer(t *testing.T, opts ...ServerOption) (*Server, *Big, string) {
	t.Helper()
	s := NewServer(opts...)
	b := new(Big)
	require.NoError(t, s.Register(b))
	require.NoError(t, s.Register(Echo{}))
	return s, b, serve(t, s, nil)
}

// waitWritten waits until the server's writers have counted every reply
// they wrote: a client may have a reply before its writer has counted it,
// and until then the reply still counts as waiting to be written.
func waitWritten(t *testing.T, s *Server) {
	t.Helper()
	waitFor(t, "the writers count their replies", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for sc := range s.conns {
			sc.mu.Lock()
			n := sc.unwritten
			sc.mu.Unlock()
			if n > 0 {
				return false
			}
		}
		return true
	})
}

// liveHeap returns the bytes of live objects on the heap, once the garbage
// is collected (twice: pooled buffers survive one collection).
func liveHeap() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// WithMaxBytesInFlight counts the replies too: a client that sends small
// requests for large replies and never reads cannot make the server hold
// more than the bound. (The check on requests alone let 64 requests of a
// few bytes in, and then their 64 MiB of replies.)
func TestUnreadRepliesStayWithinBytesInFlight(t *testing.T) {
	const (
		limit   = DefaultMaxBytesInFlight
		replies = 64
		size    = 1 << 20
	)
	_, b, addr := bigServer(t)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	// Keep the socket small: what the kernel buffers is not the heap's,
	// but the less it takes, the more the server has to hold.
	require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(16<<10))

	before := liveHeap()
	var reqs []byte
	for seq := range uint64(replies) {
		reqs, err = service.AppendRequest(context.Background(), reqs, protocol.TypeRequest, seq+1, codec.Gob, "Big.Make", size)
		require.NoError(t, err)
	}
	_, err = conn.Write(reqs) // and never read
	require.NoError(t, err)
	waitFor(t, "every method has run", func() bool { return b.made.Load() == replies })
	// Their replies are encoded and queued, or refused, a moment after the
	// methods return: later on a loaded machine. A server that holds them
	// past the bound holds them for good, so the heap is looked at until it
	// is within the bound, for 5 s at most.
	var grew int64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		grew = liveHeap() - before
		if grew < int64(limit+2<<20) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("%d replies of %d KiB not read: the heap grew by %d KiB (limit %d KiB)", replies, size>>10, grew>>10, limit>>10)
	require.Less(t, grew, int64(limit+2<<20), "the server holds replies past WithMaxBytesInFlight")

	c, err := Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reply []byte
	require.NoError(t, c.Call(ctx, "Big.Make", 10, &reply), "the server serves others")
}

// A client that reads its replies gets each one, or a ServerError saying it
// was refused; no call hangs. A single reply larger than the bound is let
// in.
func TestRepliesPastBytesInFlightAreRefused(t *testing.T) {
	const size = 1 << 20
	s, _, addr := bigServer(t, WithMaxBytesInFlight(2<<20))
	c, err := Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var ok, refused atomic.Int64
	for range 8 {
		wg.Go(func() {
			var reply []byte
			err := c.Call(ctx, "Big.Make", size, &reply)
			var se ServerError
			switch {
			case err == nil:
				ok.Add(1)
				if len(reply) != size {
					t.Errorf("a reply of %d bytes, want %d", len(reply), size)
				}
			case errors.As(err, &se):
				refused.Add(1)
				assert.ErrorContains(t, err, "refused")
				assert.ErrorContains(t, err, "WithMaxBytesInFlight 2097152")
			default:
				t.Errorf("call failed: %v", err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d replies delivered, %d refused", ok.Load(), refused.Load())
	require.Positive(t, ok.Load(), "one reply at least always goes")

	waitWritten(t, s)
	var reply []byte
	require.NoError(t, c.Call(ctx, "Big.Make", 3<<20, &reply), "a reply larger than the bound, alone")
	require.Len(t, reply, 3<<20)
}

// With the default bounds, one call with a 10 MiB reply goes through.
func TestLargeReplyAlone(t *testing.T) {
	_, _, addr := bigServer(t)
	c, err := Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var reply []byte
	require.NoError(t, c.Call(ctx, "Big.Make", 10<<20, &reply))
	require.Len(t, reply, 10<<20)
}

// A server that accepts and then never reads: the client's writer blocks
// on a full socket. The pings still find it dead, and a call without a
// deadline fails instead of hanging.
func TestServerThatStopsReadingIsFoundDead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			conn.(*net.TCPConn).SetReadBuffer(4 << 10)
			accepted <- conn
		}
	}()
	c, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw), WithPingInterval(100*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	conn := <-accepted
	defer conn.Close() // never read

	// The first call's request is being written when the socket fills, the
	// second waits in the queue, the third for room in the queue (when all
	// three goroutines run before the pings find the connection dead).
	errc := make(chan error, 3)
	for range 3 {
		go func() { errc <- c.Call(context.Background(), "Echo.Echo", make([]byte, 8<<20), new([]byte)) }()
	}
	for range 3 {
		select {
		case err := <-errc:
			require.ErrorIs(t, err, errNoPong)
		case <-time.After(5 * time.Second):
			t.Fatal("a call to a server that stopped reading hangs")
		}
	}
	// Every connection the calls used was found dead by the pings: one if
	// all three calls reached the first, more if a slow goroutine started
	// after it died and dialed again (the listener still completes
	// handshakes).
	st := c.Stats()
	require.Positive(t, st.Timeouts)
	require.Equal(t, st.Dials, st.Timeouts, "a connection that was not found dead")
}

// A large reply that arrives slowly is no silence: the bytes coming in
// show the server alive, though no whole frame has come for longer than
// the pings allow.
func TestSlowLargeReplyIsNotSilence(t *testing.T) {
	const (
		size  = 512 << 10
		chunk = 16 << 10
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { // a server that takes its time to send a reply
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		var req protocol.Frame
		if _, err := protocol.ReadFrame(bufio.NewReader(conn), 0, &req, nil); err != nil {
			return
		}
		reply, _ := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeReply, Codec: codec.Raw.ID(), Seq: req.Seq}, "", "", make([]byte, size))
		for len(reply) > 0 { // 32 chunks, one every 10 ms
			n := min(chunk, len(reply))
			if _, err := conn.Write(reply[:n]); err != nil {
				return
			}
			reply = reply[n:]
			time.Sleep(10 * time.Millisecond)
		}
		io.Copy(io.Discard, conn) // the pings, until the client closes
	})
	c, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw), WithPingInterval(50*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reply []byte
	require.NoError(t, c.Call(ctx, "Echo.Echo", []byte("x"), &reply))
	require.Len(t, reply, size)
	require.Zero(t, c.Stats().Timeouts)
	c.Close()
}

// slowListener makes the server's send buffers small, so that a client
// that reads slowly makes the server's writes wait.
type slowListener struct{ net.Listener }

func (l slowListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(16 << 10)
	}
	return c, err
}

// The idle timeout bounds a wait for progress, not a whole write: a client
// that takes a large reply slowly, but steadily, gets all of it.
func TestSlowReaderWithinIdleTimeout(t *testing.T) {
	const size = 1 << 20
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := NewServer(WithIdleTimeout(250 * time.Millisecond))
	require.NoError(t, s.Register(new(Big)))
	addr := serve(t, s, slowListener{ln})

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.(*net.TCPConn).SetReadBuffer(16<<10))
	req, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Gob, "Big.Make", size)
	require.NoError(t, err)
	_, err = conn.Write(req)
	require.NoError(t, err)

	// Read 32 KiB every 10 ms: the reply takes well over the idle timeout,
	// but the server never waits that long for the next step.
	var got []byte
	buf := make([]byte, 32<<10)
	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if l, _ := protocol.FrameLen(got, 0); l > 0 && len(got) >= l {
			break
		}
		require.NoError(t, err, "after %d bytes of the reply", len(got))
		time.Sleep(10 * time.Millisecond)
	}
	var f protocol.Frame
	_, err = protocol.Parse(got, 0, &f)
	require.NoError(t, err)
	var reply []byte
	require.NoError(t, service.DecodeReply(&f, &reply))
	require.Len(t, reply, size)
}

// A request that has begun to arrive while another was in flight is under
// the idle timeout once nothing is in flight: a client that sends half a
// frame and goes quiet does not hold its connection for ever.
func TestPartialRequestAfterInFlightTimesOut(t *testing.T) {
	g := newGate()
	s, addr := gateServer(t, g, WithIdleTimeout(100*time.Millisecond))
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	hold, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Gob, "Gate.Hold", 0)
	require.NoError(t, err)
	_, err = conn.Write(hold)
	require.NoError(t, err)
	<-g.entered
	_, err = conn.Write(rawRequest(t, 2)[:10]) // and never the rest
	require.NoError(t, err)
	waitFor(t, "the server sees the first bytes", func() bool {
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
	})
	close(g.release)

	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	var f protocol.Frame
	_, err = protocol.ReadFrame(br, 0, &f, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(1), f.Seq)
	_, err = br.ReadByte()
	require.Error(t, err)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server kept a connection with half a request for 5 s")
}
