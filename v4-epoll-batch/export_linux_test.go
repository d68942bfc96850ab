package epollbatch

import (
	"errors"
	"net"
	"testing"
	"time"
)

// Test hooks into the server's internals, kept in one file so that a
// change of those internals has one place to follow.

// serveForTest serves s on a loopback TCP listener and returns the
// listener's address once s's reactors and workers exist (the first Serve
// starts them). t.Cleanup closes s and waits for Serve to return.
func serveForTest(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
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
	return len(s.loops) > 0
}

// adoptForTest hands fd, a connected non-blocking stream socket, to one of
// s's sub-reactors, as the acceptor does with an accepted one. s must be
// serving (serveForTest). The server owns fd from then on.
func adoptForTest(s *Server, fd int) { s.adopt(fd) }

// ringsLent counts s's connections holding a ring now.
func ringsLent(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.loops {
		n += int(l.ringsLent.Load())
	}
	return n
}
