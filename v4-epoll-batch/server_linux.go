package epollbatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/internal/poller"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/internal/workers"
)

// Server serves the methods of registered receivers from a main reactor,
// which accepts, and N sub-reactors, which own the connections: no
// goroutine per connection. Methods run on a bounded pool of workers;
// replies go back through each connection's ring to its reactor, which
// writes them with writev. A Server is safe for concurrent use.
type Server struct {
	reg  *service.Registry
	opts serverOptions

	// ctx is the base of every method's ctx; Close ends it.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	shutdown  bool
	done      chan struct{}
	loops     []*loop
	next      int
	workers   *workers.Pool
	acceptors map[*acceptor]struct{}
	rings     *sync.Pool // lent to busy connections (see conn.ring)

	overloaded atomic.Int64
}

// NewServer returns a server with no services. It starts nothing: the
// reactors and workers start with the first Serve.
func NewServer(opts ...ServerOption) *Server {
	o := newServerOptions(opts)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		reg:       service.NewRegistry(o.logger),
		opts:      o,
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
		acceptors: make(map[*acceptor]struct{}),
		rings:     newRingPool(ringSizeFor(o.maxInFlight)),
	}
}

// Register publishes the methods of rcvr that fit the rules (see the package
// documentation) under the name of rcvr's type. It is safe while serving.
func (s *Server) Register(rcvr any) error { return s.reg.Register(rcvr) }

// RegisterName is Register with the service name given.
func (s *Server) RegisterName(name string, rcvr any) error { return s.reg.RegisterName(name, rcvr) }

// Serve accepts connections on ln until Shutdown or Close, then returns
// ErrServerClosed. ln must be a TCP or Unix listener (one with a file
// descriptor): the server takes its own copy of the descriptor and accepts
// with accept4 on its own epoll instance. Serve runs the main reactor on
// the calling goroutine. It closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	defer ln.Close()
	lfd, err := listenerFd(ln)
	if err != nil {
		return err
	}
	a, err := s.startAcceptor(lfd)
	if err != nil {
		unix.Close(lfd)
		return err
	}
	err = a.run()
	s.mu.Lock()
	delete(s.acceptors, a)
	s.mu.Unlock()
	a.p.Close()
	unix.Close(lfd)
	if s.closing() {
		return ErrServerClosed
	}
	return err
}

// listenerFd returns a copy of ln's descriptor, non-blocking and
// close-on-exec. A copy made with fcntl, not ln.File(): an *os.File
// nobody holds would be closed by its finalizer, and the server would stop
// accepting one day for no visible reason.
func listenerFd(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("epollbatch: Serve needs a TCP or Unix listener, got %T", ln)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, fmt.Errorf("epollbatch: copying the listener's descriptor: %w", dupErr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// startAcceptor starts the sub-reactors and workers (once) and makes the
// main reactor for lfd.
func (s *Server) startAcceptor(lfd int) (*acceptor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return nil, ErrServerClosed
	}
	if s.loops == nil {
		for range s.opts.reactors {
			l, err := newLoop(s.opts.logger, s.opts.idleTimeout)
			if err != nil {
				for _, l := range s.loops {
					l.stop()
				}
				s.loops = nil
				return nil, err
			}
			s.loops = append(s.loops, l)
			go l.run()
		}
		s.workers = workers.New(s.opts.workers, 10*time.Second)
	}
	p, err := poller.New()
	if err != nil {
		return nil, err
	}
	a := &acceptor{s: s, p: p, lfd: lfd}
	if err := p.Add(lfd, poller.Readable, 1); err != nil {
		p.Close()
		return nil, err
	}
	s.acceptors[a] = struct{}{}
	return a, nil
}

// acceptor is the main reactor: it accepts and hands each connection to a
// sub-reactor, round robin.
type acceptor struct {
	s      *Server
	p      *poller.Poller
	lfd    int
	paused bool // out of descriptors: the listener is out of epoll
}

func (a *acceptor) run() error {
	events := make([]poller.Event, 4)
	pause := time.Duration(0)
	for {
		timeout := time.Duration(-1)
		if a.paused {
			timeout = pause
		}
		n, _, err := a.p.Wait(events, timeout)
		if err != nil {
			return err
		}
		if a.s.closing() {
			return ErrServerClosed
		}
		if a.paused && n == 0 { // the pause is over: listen again
			if err := a.p.Add(a.lfd, poller.Readable, 1); err != nil {
				return err
			}
			a.paused = false
		}
		if n == 0 {
			continue
		}
		for {
			fd, _, err := unix.Accept4(a.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if err == nil {
				pause = 0
				a.s.adopt(fd)
				continue
			}
			if err == unix.EAGAIN {
				break
			}
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			if err == unix.EMFILE || err == unix.ENFILE || err == unix.ENOBUFS || err == unix.ENOMEM {
				// Out of descriptors or memory. Level-triggered epoll would
				// report the waiting connection again at once, forever:
				// take the listener out of epoll and try again later.
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				a.s.opts.logger.Warn("epollbatch: accept failed; pausing", "err", err, "pause", pause)
				if err := a.p.Del(a.lfd); err != nil {
					return err
				}
				a.paused = true
				break
			}
			return fmt.Errorf("epollbatch: accept: %w", err)
		}
	}
}

// adopt gives an accepted socket to a sub-reactor.
func (s *Server) adopt(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // no Nagle delays on replies; fails harmlessly on Unix sockets
	s.mu.Lock()
	if s.shutdown || len(s.loops) == 0 {
		s.mu.Unlock()
		unix.Close(fd)
		return
	}
	l := s.loops[s.next%len(s.loops)]
	s.next++
	s.mu.Unlock()
	c := newServerConn(l, fd, &serverSide{s: s}, s.opts.maxFrameSize, s.opts.bufSize, s.rings)
	c.maxInFlight, c.maxBytes = int64(s.opts.maxInFlight), int64(s.opts.maxBytesInFlight)
	if err := l.attach(c); err != nil {
		unix.Close(fd)
	}
}

// serverSide handles a server connection's frames: each request is copied
// out of the input buffer and run on a worker.
type serverSide struct{ s *Server }

func (ss *serverSide) attached(c *conn) {
	if ss.s.closing() {
		c.requestDrain()
	}
}

func (ss *serverSide) closed(c *conn, err error) {
	if err != nil && !errors.Is(err, errIdle) && !errors.Is(err, ErrServerClosed) && !ss.s.closing() {
		ss.s.opts.logger.Debug("epollbatch: connection closed", "err", err)
	}
}

func (ss *serverSide) frame(c *conn, raw []byte, f *protocol.Frame) {
	c.hold(len(raw))
	switch f.Type {
	case protocol.TypeRequest, protocol.TypeOneway:
		bp := getBuf()
		*bp = append((*bp)[:0], raw...) // the input buffer moves on; the worker gets a copy
		size := len(raw)
		if ss.s.workers.TrySubmit(func() { ss.handle(c, bp, size) }) {
			return
		}
		// Every worker is busy: answer now, from the reactor, which never
		// waits for a worker.
		putBuf(bp)
		ss.s.overloaded.Add(1)
		if f.Type == protocol.TypeOneway {
			ss.s.opts.logger.Debug("epollbatch: overloaded; one-way request dropped", "method", string(f.Method))
			c.settle(1, int64(size))
			return
		}
		out := getBuf()
		*out = service.AppendError((*out)[:0], &f.Header, fmt.Sprintf("epollbatch: server overloaded (%d workers busy)", ss.s.workers.Size()))
		c.inBytes.Add(int64(len(*out) - size))
		c.sendLocal(out)
	case protocol.TypePing:
		out := getBuf()
		*out, _ = protocol.AppendFrame((*out)[:0], &protocol.Header{Type: protocol.TypePong, Seq: f.Seq}, "", "", nil)
		c.inBytes.Add(int64(len(*out) - len(raw)))
		c.sendLocal(out)
	default:
		c.close(fmt.Errorf("epollbatch: unexpected %s frame from a client", f.Type))
	}
}

// handle runs one request on a worker and queues its reply.
func (ss *serverSide) handle(c *conn, bp *[]byte, size int) {
	var f protocol.Frame
	protocol.Parse(*bp, 0, &f) // checked by the reactor already
	out := getBuf()
	*out = ss.s.reg.Handle(ss.s.ctx, &f, (*out)[:0])
	putBuf(bp)
	if len(*out) == 0 { // one-way: done
		putBuf(out)
		c.settle(1, int64(size))
		c.l.schedule(c) // reading may resume, or the connection finish
		return
	}
	c.inBytes.Add(int64(len(*out) - size))
	c.send(context.Background(), out) // fails only when the connection is closed
}

func (s *Server) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// beginShutdown stops accepting. It returns the loops.
func (s *Server) beginShutdown() []*loop {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shutdown {
		s.shutdown = true
		close(s.done)
	}
	for a := range s.acceptors {
		a.p.Wake() // its run sees closing and returns
	}
	return s.loops
}

// Shutdown stops the server gracefully: it stops accepting at once, stops
// reading requests (a request already arriving is read), lets the requests
// already received run and their replies go out, closes each connection
// once nothing is in flight on it, and returns nil once every connection
// is closed. If ctx ends first, it closes everything as Close does and
// returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	loops := s.beginShutdown()
	for _, l := range loops {
		l.drainAll()
	}
	pause := time.Millisecond
	timer := time.NewTimer(pause)
	defer timer.Stop()
	for {
		open := 0
		for _, l := range loops {
			open += int(l.conns.Load()) + l.pendingAdds()
		}
		if open == 0 {
			s.stopAll(loops)
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

// Close stops the server now: it stops accepting, closes every connection
// and cancels the ctx of running methods. Serve returns ErrServerClosed.
func (s *Server) Close() error {
	loops := s.beginShutdown()
	s.cancel()
	s.stopAll(loops)
	return nil
}

// stopAll stops the reactors and releases the workers. The workers leave
// as their methods return; Close does not wait for methods that ignore
// their ctx.
func (s *Server) stopAll(loops []*loop) {
	for _, l := range loops {
		l.stop()
	}
	s.cancel()
	s.mu.Lock()
	w := s.workers
	s.mu.Unlock()
	if w != nil {
		go w.Close()
	}
}

// Stats returns figures of the server.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	loops, w := s.loops, s.workers
	s.mu.Unlock()
	var st ServerStats
	for _, l := range loops {
		st.Conns += int(l.conns.Load())
		st.Writes += l.writes.Load()
		st.Frames += l.frames.Load()
		st.InFlight += int(l.inflight.Load())
	}
	if w != nil {
		st.Workers, st.WorkersBusy = w.Running(), w.Busy()
	}
	st.Overloaded = s.overloaded.Load()
	return st
}
