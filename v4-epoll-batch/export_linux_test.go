package epollbatch

import (
	"net"
	"os"
	"testing"
	"time"
)

// The reactor's test hooks (see export_test.go).

// loopsReady: the reactors exist (or the server uses none).
func loopsReady(s *Server) bool { return len(s.reactor.loops) > 0 || s.opts.portable }

// adoptForTest hands fd, a connected non-blocking stream socket, to one of
// s's sub-reactors, as the acceptor does with an accepted one; or, on the
// portable engine, to a connection of its own. s must be serving
// (serveForTest). The server owns fd from then on.
func adoptForTest(s *Server, fd int) {
	if !s.opts.portable {
		s.adopt(fd)
		return
	}
	f := os.NewFile(uintptr(fd), "adopted")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		panic(err)
	}
	s.serveConn(nc)
}

// portable reports whether the tests run on the portable engine (the
// build tag rpcsteps_portable); the reactor's own tests skip then.
func skipOnPortable(t *testing.T) {
	t.Helper()
	if portableDefault {
		t.Skip("a test of the epoll reactor; this build serves with the portable engine")
	}
}

// ringsLent counts s's connections holding a ring now.
func ringsLent(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.reactor.loops {
		n += int(l.ringsLent.Load())
	}
	return n
}

// setCost makes the server take method as one that runs for d (batch.go),
// as if it had run already.
func setCost(s *Server, method string, d time.Duration) {
	s.costs.note(s.reg, []byte(method), d) // adds it
	m := *s.costs.m.Load()
	if c := m[method]; c != nil {
		c.Store(int64(d))
	}
}

// costsKept counts the methods whose times s keeps.
func costsKept(s *Server) int {
	if m := s.costs.m.Load(); m != nil {
		return len(*m)
	}
	return 0
}
