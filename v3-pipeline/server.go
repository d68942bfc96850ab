package pipeline

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/service"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = service.ErrServerClosed

// ServerError is an error that happened on the server's side of a call: the
// method's own error, or a failure to find, decode or run it. Its text is the
// method's error text.
type ServerError = service.ServerError

// Server serves the methods of registered receivers. Each connection has a
// reader, which starts a goroutine per request, and a writer: requests of
// one connection run at once and their replies leave in the order they
// finish, matched by sequence ID. A Server is safe for concurrent use.
type Server struct {
	reg  *service.Registry
	opts serverOptions

	// ctx is the base of every method's ctx. cancel ends it: Close does, and
	// Shutdown when its own ctx expires.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	shutdown  bool
	done      chan struct{} // closed when shutdown begins
	listeners map[net.Listener]struct{}
	conns     map[*sconn]struct{}

	flushes, frames atomic.Int64
}

// NewServer returns a server with no services.
func NewServer(opts ...ServerOption) *Server {
	o := newServerOptions(opts)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		reg:       service.NewRegistry(o.logger),
		opts:      o,
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*sconn]struct{}),
	}
}

// Register publishes the methods of rcvr that fit the rules (see the package
// documentation) under the name of rcvr's type. It is safe while serving.
func (s *Server) Register(rcvr any) error { return s.reg.Register(rcvr) }

// RegisterName is Register with the service name given.
func (s *Server) RegisterName(name string, rcvr any) error { return s.reg.RegisterName(name, rcvr) }

// Serve accepts connections on ln and serves each on its own goroutine,
// until Shutdown or Close; then it returns ErrServerClosed. It closes ln
// when it returns. Failures to accept that may pass (too many open files)
// are retried after a growing pause.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var pause time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.opts.logger.Warn("pipeline: accept failed; retrying", "err", err, "pause", pause)
			select {
			case <-time.After(pause):
				continue
			case <-s.done:
				return ErrServerClosed
			}
		}
		pause = 0
		sc := newSconn(s, c)
		if !s.track(sc) {
			c.Close()
			return ErrServerClosed
		}
		go sc.serve()
	}
}

func (s *Server) logDrop(c net.Conn, err error) {
	if errors.Is(err, io.EOF) || s.closing() {
		return
	}
	s.opts.logger.Debug("pipeline: connection dropped", "remote", c.RemoteAddr(), "err", err)
}

func (s *Server) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// track records a new connection; it refuses when shutdown has begun.
func (s *Server) track(sc *sconn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.conns[sc] = struct{}{}
	return true
}

func (s *Server) untrack(sc *sconn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, sc)
}

// beginShutdown stops accepting, and stops every connection gracefully (its
// requests in flight finish) or, when now is set, closes it.
func (s *Server) beginShutdown(now bool) {
	s.mu.Lock()
	if !s.shutdown {
		s.shutdown = true
		close(s.done)
	}
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*sconn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
	}
	s.mu.Unlock()
	for _, sc := range conns {
		if now {
			sc.close()
		} else {
			sc.shutdown()
		}
	}
}

// ServerStats are figures of a server since it was made.
type ServerStats struct {
	Conns   int   // connections open now
	Flushes int64 // writes of the connections' writers
	Frames  int64 // replies they wrote: Frames/Flushes is the batching
}

// Stats returns figures of the server.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	return ServerStats{Conns: n, Flushes: s.flushes.Load(), Frames: s.frames.Load()}
}

// Shutdown stops the server gracefully: it closes the listeners at once,
// stops reading requests (a request already arriving is read), lets the
// requests already received run and send their replies, closes each
// connection once nothing is in flight on it, and returns nil once every
// connection is closed. If ctx ends first, it closes
// everything as Close does and returns ctx.Err(). Serve returns
// ErrServerClosed.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginShutdown(false)
	pause := time.Millisecond
	timer := time.NewTimer(pause)
	defer timer.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			s.cancel()
			return nil
		}
		select {
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		case <-timer.C:
			pause = min(2*pause, 50*time.Millisecond)
			timer.Reset(pause)
		}
	}
}

// Close stops the server now: it closes the listeners and every connection,
// and cancels the ctx of running methods. Serve returns ErrServerClosed.
func (s *Server) Close() error {
	s.beginShutdown(true)
	s.cancel()
	return nil
}
