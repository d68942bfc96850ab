package epollbatch

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/codec"
)

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard limit for the
// test, and returns the soft limit now in force.
func raiseNoFile(t *testing.T) int {
	var lim unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &lim))
	old := lim
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Logf("cannot raise RLIMIT_NOFILE: %v", err)
		return int(old.Cur)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &old) })
	return int(lim.Cur)
}

func settleGoroutines() int {
	n := runtime.NumGoroutine()
	for range 100 {
		time.Sleep(5 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}

// Thousands of idle connections cost the server no goroutine each: the
// count of goroutines is the same with none and with all of them.
func TestIdleConnectionsCostNoGoroutines(t *testing.T) {
	skipOnPortable(t)
	limit := raiseNoFile(t)
	n := min(10_000, (limit-200)/2) // a client and a server descriptor per connection
	if testing.Short() {
		n = min(n, 1000)
	}
	require.Greater(t, n, 100, "RLIMIT_NOFILE too low for this test")

	s := NewServer(WithReactors(2))
	require.NoError(t, s.RegisterName("echo", echo{}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	defer func() {
		s.Close()
		<-served
	}()

	// One call first, so that the reactors and a worker exist.
	c, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw))
	require.NoError(t, err)
	var reply []byte
	require.NoError(t, c.Call(context.Background(), "echo.Echo", []byte("warm"), &reply))
	c.Close()
	require.Eventually(t, func() bool { return s.Stats().Conns == 0 }, 5*time.Second, time.Millisecond)
	before := settleGoroutines()

	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for range n {
		nc, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		conns = append(conns, nc)
	}
	require.Eventually(t, func() bool { return s.Stats().Conns == n }, 20*time.Second, 5*time.Millisecond)
	after := settleGoroutines()
	t.Logf("%d idle connections: goroutines %d before, %d after", n, before, after)
	// Raw net.Conns start no goroutines; the server's count must not move.
	require.LessOrEqual(t, after-before, 2, "server goroutines grew with connections")

	// and they all still work: a request on the last one gets its reply.
	c2, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c2.Close()
	require.NoError(t, c2.Call(context.Background(), "echo.Echo", []byte("still here"), &reply))
	require.Equal(t, "still here", string(reply))
}
