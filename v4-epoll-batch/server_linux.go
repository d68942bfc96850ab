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

	"github.com/panjf2000/ants/v2"
	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/internal/poller"
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
	workers   *ants.PoolWithFuncGeneric[*task] // runs the methods; made by the first Serve
	acceptors map[*acceptor]struct{}
	rings     *sync.Pool // lent to busy connections (see conn.ring)

	overloaded atomic.Int64
	busy       atomic.Int32 // workers running a method now
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
		w, err := newWorkers(s)
		if err != nil {
			for _, l := range s.loops {
				l.stop()
			}
			s.loops = nil
			return nil, err
		}
		s.workers = w
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

// serverSide handles a server connection's frames: a request goes to a
// worker with a copy of its bytes; a ping is answered on the spot.
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

// written: each frame written answers one request (or ping) in flight.
func (ss *serverSide) written(c *conn, n, bytes int64) { c.settle(n, bytes) }

func (ss *serverSide) frame(c *conn, raw []byte, f *protocol.Frame) {
	c.hold(len(raw))
	switch f.Type {
	case protocol.TypeRequest, protocol.TypeOneway:
		t := taskPool.Get().(*task)
		t.c, t.size = c, len(raw)
		t.bp = getBuf()
		*t.bp = append((*t.bp)[:0], raw...) // the input buffer moves on; the worker gets a copy
		t.f = *f
		rebase(&t.f, *t.bp) // parsed once, here, against this server's frame limit
		err := ss.s.workers.Invoke(t)
		if err == nil {
			return
		}
		// Every worker is busy (ants.ErrPoolOverload), or the pool is
		// closed: answer now, from the reactor, which never waits for a
		// worker.
		putBuf(t.bp)
		*t = task{}
		taskPool.Put(t)
		ss.s.overloaded.Add(1)
		if f.Type == protocol.TypeOneway { // no one to tell: dropped, and logged
			ss.s.opts.logger.Debug("epollbatch: overloaded; one-way request dropped", "method", string(f.Method), "err", err)
			c.settle(1, int64(len(raw)))
			return
		}
		out := getBuf()
		msg := fmt.Sprintf("epollbatch: server overloaded (%d workers busy)", ss.s.workers.Cap())
		if !errors.Is(err, ants.ErrPoolOverload) {
			msg = "epollbatch: server closing"
		}
		*out = service.AppendError((*out)[:0], &f.Header, msg)
		c.inBytes.Add(int64(len(*out) - len(raw)))
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

// rebase points f's sections into b, a copy of the bytes f was parsed
// from: the sections follow the header in wire order (method, error text,
// body), so their lengths place them.
func rebase(f *protocol.Frame, b []byte) {
	m := protocol.HeaderSize + len(f.Method)
	e := m + len(f.Error)
	f.Method, f.Error, f.Body = b[protocol.HeaderSize:m:m], b[m:e:e], b[e:len(b):len(b)]
}

// task is one request handed to a worker: its connection, a copy of its
// bytes and the frame parsed from them. Tasks are pooled: handing one
// over allocates nothing.
type task struct {
	c    *conn
	bp   *[]byte
	f    protocol.Frame // its sections alias *bp
	size int            // the request's size, counted in flight
}

var taskPool = sync.Pool{New: func() any { return new(task) }}

// Workers: the server's methods run on an ants pool of its own, made by
// the first Serve and released by Close or Shutdown. Submitting never
// waits (a full pool answers "overloaded"), and a worker idle for
// workerIdle leaves at the pool's next purge, so an idle server keeps
// none for more than twice that.
const workerIdle = time.Second

func newWorkers(s *Server) (*ants.PoolWithFuncGeneric[*task], error) {
	return ants.NewPoolWithFuncGeneric(s.opts.workers, s.run,
		ants.WithNonblocking(true),
		ants.WithExpiryDuration(workerIdle),
		ants.WithLogger(silentAnts{}),
		ants.WithPanicHandler(func(p any) {
			// Registry.Handle recovers the methods' panics: this is a bug here.
			s.opts.logger.Error("epollbatch: worker panicked", "panic", p)
		}))
}

// silentAnts keeps ants from writing to stderr: the library is silent.
type silentAnts struct{}

func (silentAnts) Printf(string, ...any) {}

// run runs one request on a worker and queues its reply.
func (s *Server) run(t *task) {
	s.busy.Add(1)
	c, size, h := t.c, t.size, t.f.Header
	out := getBuf()
	*out = s.reg.Handle(s.ctx, &t.f, (*out)[:0])
	putBuf(t.bp)
	*t = task{}
	taskPool.Put(t)
	s.busy.Add(-1)
	if len(*out) == 0 { // one-way: done
		putBuf(out)
		c.settle(1, int64(size))
		c.l.schedule(c) // reading may resume, or the connection finish
		return
	}
	out = c.admitReply(out, size, &h)
	c.send(context.Background(), out) // fails only when the connection is closed
}

// admitReply counts a reply in the connection's bytes in flight, in place
// of its request (reqSize bytes), and returns the frame to queue. A reply
// that would take the connection past WithMaxBytesInFlight while other
// replies still wait to be written is refused: an error reply goes in
// its place, so that a client that does not read cannot make the server
// hold more than the limit. One reply is always let in when none waits,
// however large (up to the frame limit). Any worker goroutine.
func (c *conn) admitReply(out *[]byte, reqSize int, h *protocol.Header) *[]byte {
	c.replyMu.Lock()
	defer c.replyMu.Unlock()
	n := int64(len(*out))
	held, waiting := c.inBytes.Load()-int64(reqSize), c.outBytes.Load()
	if held+n > c.maxBytes && waiting > 0 {
		putBuf(out)
		out = getBuf()
		*out = service.AppendError((*out)[:0], h, fmt.Sprintf(
			"epollbatch: reply of %d bytes refused: the connection already holds %d bytes not yet written (WithMaxBytesInFlight %d); the client is not reading its replies",
			n, held, c.maxBytes))
		n = int64(len(*out))
	}
	c.inBytes.Add(n - int64(reqSize))
	c.outBytes.Add(n)
	return out
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
		// No new task from here; idle workers leave now, busy ones when
		// their method returns.
		w.Release()
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
		st.Workers = w.Running()
	}
	st.WorkersBusy = int(s.busy.Load())
	st.Overloaded = s.overloaded.Load()
	return st
}
