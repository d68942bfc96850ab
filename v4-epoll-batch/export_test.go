package epollbatch

import (
	"errors"
	"net"
	"testing"
	"time"
)

// Test hooks into the server's internals, kept in two files (this one,
// and export_linux_test.go for the reactor's) so that a change of those
// internals has one place to follow.

// serveForTest serves s on a loopback TCP listener and returns the
// listener's address once s's reactors and workers exist (the first Serve
// starts them). t.Cleanup closes s and waits for Serve to return.
func serveForTest(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, s, ln)
}

// serveOn is serveForTest on a listener of the test's choice.
func serveOn(t testing.TB, s *Server, ln net.Listener) string {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for !reactorsStarted(s) {
		if time.Now().After(deadline) {
			t.Fatal("the server's reactors did not start")
		}
		time.Sleep(time.Millisecond)
	}
	return ln.Addr().String()
}

func reactorsStarted(s *Server) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.workers != nil && loopsReady(s)
}

// echo answers with its arguments.
type echo struct{}

func (echo) Echo(args []byte, reply *[]byte) error {
	*reply = append((*reply)[:0], args...)
	return nil
}
