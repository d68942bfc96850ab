package epollbatch

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// The tests of ErrNotSent and ErrConnLost: what a failed call says of
// whether its server may have run it. Each runs on both client engines
// (in a build with the tag rpcsteps_portable, or off Linux, both
// subtests run the portable one).

func forEachEngine(t *testing.T, f func(t *testing.T, opts ...ClientOption)) {
	t.Run("default", func(t *testing.T) { f(t) })
	t.Run("portable", func(t *testing.T) { f(t, WithPortableEngine()) })
}

// onlyNotSent checks that err says "not sent", and not "sent".
func onlyNotSent(t *testing.T, err error, what string) {
	t.Helper()
	require.Error(t, err, what)
	require.ErrorIs(t, err, ErrNotSent, what)
	require.NotErrorIs(t, err, ErrConnLost, what)
}

// onlyConnLost checks that err says "sent, then lost", and not "not sent".
func onlyConnLost(t *testing.T, err error, what string) {
	t.Helper()
	require.Error(t, err, what)
	require.ErrorIs(t, err, ErrConnLost, what)
	require.NotErrorIs(t, err, ErrNotSent, what)
}

// A call that finds its server gone, and the dial refused, was not sent;
// nor are the calls made during the pause after that failed dial, nor
// those of a closed client. Connected follows the connection.
func TestNotSentWhenTheDialFails(t *testing.T) {
	forEachEngine(t, func(t *testing.T, opts ...ClientOption) {
		s := NewServer()
		require.NoError(t, s.RegisterName("echo", echo{}))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		served := make(chan error, 1)
		go func() { served <- s.Serve(ln) }()

		c, err := Dial("tcp", ln.Addr().String(), opts...)
		require.NoError(t, err)
		defer c.Close()
		require.True(t, c.Connected())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var reply []byte
		require.NoError(t, c.Call(ctx, "echo.Echo", []byte("x"), &reply))

		require.NoError(t, s.Close()) // closes the listener and the connection
		require.ErrorIs(t, <-served, ErrServerClosed)
		require.Eventually(t, func() bool { return !c.Connected() }, 5*time.Second, time.Millisecond,
			"the client did not see its connection closed")

		err = c.Call(ctx, "echo.Echo", []byte("x"), &reply)
		onlyNotSent(t, err, "a call whose dial was refused")
		require.ErrorIs(t, err, syscall.ECONNREFUSED)
		err = c.Call(ctx, "echo.Echo", []byte("x"), &reply)
		onlyNotSent(t, err, "a call in the pause after a failed dial")
		require.ErrorContains(t, err, "next attempt in")
		onlyNotSent(t, c.Notify(ctx, "echo.Echo", []byte("x")), "a Notify in the pause")
		call := <-c.Go(ctx, "echo.Echo", []byte("x"), &reply, nil).Done
		onlyNotSent(t, call.Error, "a Go in the pause")
		require.False(t, c.Connected())

		c.Close()
		err = c.Call(ctx, "echo.Echo", []byte("x"), &reply)
		require.ErrorIs(t, err, ErrShutdown)
		onlyNotSent(t, err, "a call of a closed client")
	})
}

// A call whose server read the request and then closed the connection may
// have run: ErrConnLost. So may one in flight when the client closes.
func TestConnLostWhenTheServerReadsAndCloses(t *testing.T) {
	forEachEngine(t, func(t *testing.T, opts ...ClientOption) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		read := make(chan struct{}, 2)
		var wg sync.WaitGroup
		defer wg.Wait()
		defer ln.Close()
		wg.Go(func() {
			for i := 0; ; i++ {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				var f protocol.Frame
				_, err = protocol.ReadFrame(bufio.NewReader(nc), 0, &f, nil)
				read <- struct{}{}
				if err == nil && i == 0 {
					nc.Close() // the first connection: read, then close
					continue
				}
				io.Copy(io.Discard, nc) // the second: read, never answer
				nc.Close()
			}
		})

		c, err := Dial("tcp", ln.Addr().String(), opts...)
		require.NoError(t, err)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var reply []byte
		err = c.Call(ctx, "echo.Echo", []byte("x"), &reply)
		onlyConnLost(t, err, "a call read by a server that then closed")
		require.Nil(t, reply)

		// A second connection; a call in flight on it when the client closes.
		call := c.Go(ctx, "echo.Echo", []byte("x"), &reply, nil)
		<-read
		<-read
		c.Close()
		select {
		case call = <-call.Done:
		case <-time.After(5 * time.Second):
			t.Fatal("a call in flight did not end with Close")
		}
		require.ErrorIs(t, call.Error, ErrShutdown)
		onlyConnLost(t, call.Error, "a call in flight, sent, when the client closed")
	})
}

// A server that reads two requests, then nothing, then resets the
// connection, while the client has many more large requests queued:
// those it never saw end with ErrNotSent, those it read with
// ErrConnLost, and no call it read is said not to have been sent. With
// the default WithMaxQueuedBytes most requests wait for room in the
// queue; with a queue that takes them all, every request is queued for
// the writer, and which were written is what tells them apart.
func TestNotSentAndConnLostWhenQueuedRequestsDie(t *testing.T) {
	for _, queue := range []int{0, 64 << 20} {
		t.Run(fmt.Sprintf("queue=%d", queue), func(t *testing.T) { testQueuedRequestsDie(t, queue) })
	}
}

func testQueuedRequestsDie(t *testing.T, queue int) {
	const calls, size = 64, 512 << 10 // 32 MiB: more than the socket buffers on loopback hold
	forEachEngine(t, func(t *testing.T, opts ...ClientOption) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		seen := make(chan []uint32, 1)
		kill := make(chan struct{})
		var killOnce sync.Once
		var wg sync.WaitGroup
		defer wg.Wait()
		defer killOnce.Do(func() { close(kill) })
		defer ln.Close()
		wg.Go(func() {
			nc, err := ln.Accept()
			if err != nil {
				close(seen)
				return
			}
			defer nc.Close()
			br := bufio.NewReader(nc)
			var ids []uint32
			var f protocol.Frame
			var buf []byte
			for range 2 {
				if buf, err = protocol.ReadFrame(br, 0, &f, buf); err != nil {
					break
				}
				ids = append(ids, binary.BigEndian.Uint32(f.Body))
			}
			seen <- ids
			<-kill
			nc.(*net.TCPConn).SetLinger(0) // unread bytes: the close is a reset
		})

		c, err := Dial("tcp", ln.Addr().String(), append(opts, WithCodec(codec.Raw), WithPingInterval(0), WithMaxQueuedBytes(queue))...)
		require.NoError(t, err)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done := make(chan *Call, calls)
		for i := range calls {
			args := make([]byte, size)
			binary.BigEndian.PutUint32(args, uint32(i))
			c.Go(ctx, "echo.Echo", args, new([]byte), done)
		}
		ids := <-seen
		require.Len(t, ids, 2, "the server read two requests")
		// Let the client fill what it can: the socket, then its queue.
		time.Sleep(100 * time.Millisecond)
		killOnce.Do(func() { close(kill) })

		var notSent, lost []uint32
		for range calls {
			var call *Call
			select {
			case call = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("calls did not end when the connection was reset (%d ended)", len(notSent)+len(lost))
			}
			id := binary.BigEndian.Uint32(call.Args.([]byte))
			sentIs, lostIs := errors.Is(call.Error, ErrNotSent), errors.Is(call.Error, ErrConnLost)
			require.True(t, sentIs != lostIs, "call %d: %v: want exactly one of ErrNotSent and ErrConnLost", id, call.Error)
			if sentIs {
				notSent = append(notSent, id)
			} else {
				lost = append(lost, id)
			}
		}
		for _, id := range ids {
			require.NotContains(t, notSent, id, "a call the server read was said not to have been sent")
			require.Contains(t, lost, id)
		}
		assert.NotEmpty(t, notSent, "calls still queued were said to have been sent")
		t.Logf("%d calls not sent, %d lost", len(notSent), len(lost))
	})
}

// DialContext gives up with its ctx.
func TestDialContext(t *testing.T) {
	s := NewServer()
	addr := serveForTest(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := DialContext(ctx, "tcp", addr)
	require.ErrorIs(t, err, context.Canceled)
	c, err := DialContext(context.Background(), "tcp", addr)
	require.NoError(t, err)
	require.True(t, c.Connected())
	c.Close()
	require.False(t, c.Connected())
}
