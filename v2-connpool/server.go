package connpool

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = service.ErrServerClosed

// ServerError is an error that happened on the server's side of a call: the
// method's own error, or a failure to find, decode or run it. Its text is the
// method's error text.
type ServerError = service.ServerError

// Server serves the methods of registered receivers. Each connection is
// served by a goroutine of its own, one request after another, for as long
// as the client keeps it open (and sends a request within the idle
// timeout). A Server is safe for concurrent use.
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
	conns     map[net.Conn]bool // value: a request has begun to arrive
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
		conns:     make(map[net.Conn]bool),
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
			s.opts.logger.Warn("connpool: accept failed; retrying", "err", err, "pause", pause)
			select {
			case <-time.After(pause):
				continue
			case <-s.done:
				return ErrServerClosed
			}
		}
		pause = 0
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		go s.serveConn(c)
	}
}

// serveConn serves the requests of one connection, one after another,
// until the client closes it, an error, the idle timeout, or shutdown. The
// connection's reader, writer and frame buffer live as long as it does.
func (s *Server) serveConn(c net.Conn) {
	defer s.untrack(c)
	defer c.Close()

	br := bufio.NewReaderSize(c, s.opts.bufSize)
	bw := bufio.NewWriterSize(c, s.opts.bufSize)
	var rbuf []byte
	for {
		c.SetReadDeadline(time.Now().Add(s.opts.idleTimeout))
		if _, err := br.Peek(1); err != nil {
			s.logDrop(c, err)
			return
		}
		// From its first byte on, the request counts as received: Shutdown
		// waits for it instead of cutting it off.
		s.setActive(c, true)

		var req protocol.Frame
		var err error
		if rbuf, err = protocol.ReadFrame(br, s.opts.maxFrameSize, &req, rbuf); err != nil {
			s.logDrop(c, err)
			return
		}
		if !s.serveFrame(c, bw, &req) {
			return
		}
		if cap(rbuf) > maxPooledBuf {
			rbuf = nil // do not keep a large request's buffer for the connection's life
		}
		if !s.setActive(c, false) {
			return // shutting down: the connection is idle now, close it
		}
	}
}

// serveFrame runs one request and writes its reply. It reports whether the
// connection can go on.
func (s *Server) serveFrame(c net.Conn, bw *bufio.Writer, req *protocol.Frame) bool {
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledBuf {
			bufPool.Put(bp)
		}
	}()
	switch req.Type {
	case protocol.TypeRequest, protocol.TypeOneway:
		*bp = s.reg.Handle(s.ctx, req, (*bp)[:0])
	case protocol.TypePing:
		*bp, _ = protocol.AppendFrame((*bp)[:0], &protocol.Header{Type: protocol.TypePong, Seq: req.Seq}, "", "", nil)
	default:
		s.opts.logger.Debug("connpool: unexpected frame from a client", "remote", c.RemoteAddr(), "type", req.Type)
		return false
	}
	if len(*bp) == 0 {
		return true // one-way
	}
	c.SetWriteDeadline(time.Now().Add(s.opts.idleTimeout))
	if _, err := bw.Write(*bp); err != nil {
		s.logDrop(c, err)
		return false
	}
	if err := bw.Flush(); err != nil {
		s.logDrop(c, err)
		return false
	}
	return true
}

func (s *Server) logDrop(c net.Conn, err error) {
	if errors.Is(err, io.EOF) || s.closing() {
		return
	}
	s.opts.logger.Debug("connpool: connection dropped", "remote", c.RemoteAddr(), "err", err)
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
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.conns[c] = false
	return true
}

// setActive records whether a request is under way on c. Going idle, it
// reports false once shutdown has begun: the connection should close.
func (s *Server) setActive(c net.Conn, active bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[c]; ok {
		s.conns[c] = active
	}
	return active || !s.shutdown
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// beginShutdown stops accepting, and closes the connections on which no
// request has begun (all of them when all is true).
func (s *Server) beginShutdown(all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shutdown {
		s.shutdown = true
		close(s.done)
	}
	for ln := range s.listeners {
		ln.Close()
	}
	for c, active := range s.conns {
		if all || !active {
			c.Close()
		}
	}
}

// Shutdown stops the server gracefully: it closes the listeners and the
// idle connections at once, lets the requests already received run and send
// their replies, closes each connection after its reply, and returns nil
// once every connection is closed. If ctx ends first, it closes
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
