package epollbatch

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// An idle connection is pinged and stays, past the server's idle timeout;
// a server that stops answering is found dead and its calls fail.
func TestPingKeepsAndFindsDead(t *testing.T) {
	s := NewServer(WithIdleTimeout(200 * time.Millisecond))
	require.NoError(t, s.RegisterName("echo", echo{}))
	addr := serveForTest(t, s)
	c, err := Dial("tcp", addr, WithPingInterval(20*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	time.Sleep(400 * time.Millisecond) // twice the server's idle timeout
	st := c.Stats()
	require.Equal(t, 1, st.Conns, "pings kept the connection")
	require.EqualValues(t, 1, st.Dials)

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
	call := mute.Go(context.Background(), "echo.Echo", []byte("x"), new([]byte), nil)
	select {
	case call = <-call.Done:
		require.ErrorIs(t, call.Error, errNoPong)
	case <-time.After(5 * time.Second):
		t.Fatal("a silent server was not found dead")
	}
}

// A full ring at a heartbeat is not death: a server that stops reading
// longer than an interval (a beat finds the ring full) but less than three,
// with one-way traffic (which owes no reply), keeps its connection.
//
// Over a Unix socket: its kernel buffer holds some 200 KiB, so that the
// ring fills within the first interval, and the server has a backlog of a
// few thousand requests to work through once it reads again. (Over TCP,
// whose buffers grow to megabytes, the queue's byte limit often bound
// first, so that no beat found the ring full, and the server had some
// 15,000 requests to work through before the ping, in an interval: on a
// loaded machine it sometimes took longer, and the test failed.)
func TestFullRingIsNotDeath(t *testing.T) {
	skipOnPortable(t)
	const interval = 600 * time.Millisecond // the ring took 75 to 150 ms to fill under two CPU burners, with -race
	s := NewServer(WithMaxInFlight(8))
	g := newGate()
	require.NoError(t, s.RegisterName("gate", g))
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	require.NoError(t, err)
	addr := serveOn(t, s, ln)
	t.Cleanup(g.open) // before the server's Close

	c, err := Dial("unix", addr, WithPingInterval(interval))
	require.NoError(t, err)
	defer c.Close()
	c.mu.Lock()
	r := c.slots[0].conn.(*clientConn).c.ring
	c.mu.Unlock()
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			c.Notify(ctx, "gate.Wait", make([]byte, 256))
			cancel()
		}
	}()
	// The server reads nothing (the gate holds its 8 workers): the socket
	// fills, then the frames waiting for writev, then the ring, before the
	// first beat, which therefore finds it full.
	time.Sleep(interval * 3 / 4)
	require.Equal(t, r.Cap(), r.Len(), "the ring is not full when the first beat is due")
	time.Sleep(interval * 3 / 4) // 1.5 intervals in all
	stop.Store(true)
	g.open()
	<-done
	time.Sleep(3 * interval) // with a healthy, idle server
	require.Equal(t, 1, c.Stats().Conns)
	require.EqualValues(t, 1, c.Stats().Dials, "a healthy connection was declared dead")
}
