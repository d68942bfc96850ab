package epollbatch

import (
	"context"
	"net"
	"sync"
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
