package contracttest

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// CountingListener counts the connections it accepts. Versions' own tests
// use it to show how many connections their calls cost.
type CountingListener struct {
	net.Listener
	accepted atomic.Int64
}

// Accept accepts from the wrapped listener and counts successes.
func (l *CountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// Accepted returns how many connections were accepted so far.
func (l *CountingListener) Accepted() int64 { return l.accepted.Load() }

// flakyListener fails its first Accepts as a process out of descriptors does.
type flakyListener struct {
	net.Listener
	failures atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// Running out of file descriptors pauses accepting, with a log line; it
// does not end Serve.
func testAcceptErrorsAreRetried(t *testing.T, v Version) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &flakyListener{Listener: inner}
	ln.failures.Store(3)
	e := startOn(t, v, Options{}, ln)
	add(t, e.dial(Options{}), 2, 3)
	require.Contains(t, e.logs.String(), "too many open files")
}

// A listener closed behind the server's back ends Serve with that error,
// not ErrServerClosed.
func testListenerClosedElsewhere(t *testing.T, v Version) {
	s := v.NewServer(Options{})
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	time.Sleep(10 * time.Millisecond)
	ln.Close()
	select {
	case err = <-served:
	case <-time.After(guard):
		t.Fatal("Serve did not return when its listener was closed")
	}
	require.True(t, errors.Is(err, net.ErrClosed), "Serve returned %v", err)
	require.NotErrorIs(t, err, v.ErrServerClosed)
}
