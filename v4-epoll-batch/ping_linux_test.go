package epollbatch

import (
	"context"
	"net"
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
// with one-way traffic (which owes no reply),
// keeps its connection.
func TestFullRingIsNotDeath(t *testing.T) {
	skipOnPortable(t)
	s, g := newTestServer(t, WithMaxInFlight(8))
	addr := ""
	s.mu.Lock()
	for ln := range s.listeners {
		addr = ln.Addr().String()
	}
	s.mu.Unlock()
	// The server stops reading for 1.5 intervals: a beat finds the ring
	// full. 400 ms, not less: on a loaded machine (the race detector, two
	// cores) the server may take a while to work through the one-way
	// requests queued before it answers the next ping.
	c, err := Dial("tcp", addr, WithPingInterval(400*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
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
	time.Sleep(600 * time.Millisecond) // the server reads nothing: the gate holds its 8 workers
	stop.Store(true)
	g.open()
	<-done
	time.Sleep(1200 * time.Millisecond) // three intervals, with a healthy, idle server
	require.Equal(t, 1, c.Stats().Conns)
	require.EqualValues(t, 1, c.Stats().Dials, "a healthy connection was declared dead")
}
