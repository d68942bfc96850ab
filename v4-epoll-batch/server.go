package epollbatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/ants/v2"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// Server serves the methods of registered receivers. On Linux, the
// connections of plain TCP and Unix listeners are driven by epoll
// reactors: a main reactor accepts, N sub-reactors own the connections,
// and no goroutine waits on a connection. Every other connection (TLS, a
// listener whose connections have no descriptor of their own, every
// system without epoll) is served by the portable engine: a reader and a
// writer goroutine over its net.Conn, with the same frames, limits and
// back-pressure. Methods run on a bounded pool of workers, whichever
// engine read them. A Server is safe for concurrent use.
type Server struct {
	reg  *service.Registry
	opts serverOptions

	// ctx is the base of every method's ctx; Close ends it.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	shutdown  bool
	done      chan struct{}
	workers   *ants.PoolWithFuncGeneric[*task] // runs the methods; made by the first Serve
	listeners map[net.Listener]struct{}
	pconns    map[*pconn]struct{} // the portable engine's connections
	reactor   reactorServer       // the epoll engine (server_linux.go); empty elsewhere

	portable   engineStats // the portable engine's figures
	overloaded atomic.Int64
	// requests handed to workers, the hand-offs that carried them, and
	// the batches that spilled (ServerStats)
	requests, handoffs, spills atomic.Int64
	queued, stalls             atomic.Int64 // batches that waited for a busy worker; stall timer wake-ups
	running                    atomic.Int32 // workers running a request or a batch: at most WithWorkers
	quickBusy                  atomic.Int32 // of them, the workers of quick batches, which take the queue
	costs                      costTable    // what each method takes, which decides the batches (batch.go)
	queue                      batchQueue   // quick batches waiting for a busy worker (batch.go)

	onShutdown []func() // RegisterOnShutdown; guarded by mu
}

// engineStats are the figures an engine keeps for ServerStats.
type engineStats struct {
	inflight       atomic.Int64
	writes, frames atomic.Int64
}

// NewServer returns a server with no services. It starts nothing: the
// reactors and workers start with the first Serve.
func NewServer(opts ...ServerOption) *Server {
	o := newServerOptions(opts)
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		reg:       service.NewRegistry(o.logger),
		opts:      o,
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
		listeners: make(map[net.Listener]struct{}),
		pconns:    make(map[*pconn]struct{}),
	}
	s.reactor.init(o)
	return s
}

// Register publishes the methods of rcvr that fit the rules (see the package
// documentation) under the name of rcvr's type. It is safe while serving.
func (s *Server) Register(rcvr any) error { return s.reg.Register(rcvr) }

// RegisterName is Register with the service name given.
func (s *Server) RegisterName(name string, rcvr any) error { return s.reg.RegisterName(name, rcvr) }

// Serve accepts connections on ln until Shutdown or Close, then returns
// ErrServerClosed; if ln is closed elsewhere, it returns that error
// (errors.Is(err, net.ErrClosed)). It closes ln when it returns.
//
// Any net.Listener will do: Serve accepts by calling its Accept, so a
// wrapper sees every connection. This loop is the main reactor. On Linux
// a plain TCP or Unix connection goes to an epoll sub-reactor, which
// takes a copy of its descriptor (Go's copy is closed); any other
// connection (TLS, for one), and every connection on other systems, to
// the portable engine. Failures to accept that may pass (too many open
// files) pause accepting for a growing while, instead of trying again at
// once, which would spin.
func (s *Server) Serve(ln net.Listener) error {
	defer ln.Close()
	if err := s.start(ln); err != nil {
		return err
	}
	defer s.forget(ln)
	if !s.opts.portable {
		if err := s.startLoops(); err != nil {
			return err
		}
	}
	err := s.serveAccept(ln)
	if s.closing() {
		return ErrServerClosed
	}
	return err
}

// start records ln, to be closed by Shutdown, and starts the workers.
func (s *Server) start(ln net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return ErrServerClosed
	}
	if s.workers == nil {
		w, err := newWorkers(s)
		if err != nil {
			return err
		}
		s.workers = w
	}
	s.listeners[ln] = struct{}{}
	return nil
}

func (s *Server) forget(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
}

// serveAccept accepts with ln.Accept until ln fails for good.
func (s *Server) serveAccept(ln net.Listener) error {
	var pause time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing() || errors.Is(err, net.ErrClosed) {
				return err
			}
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			s.opts.logger.Warn("epollbatch: accept failed; pausing", "err", err, "pause", pause)
			select {
			case <-time.After(pause):
				continue
			case <-s.done:
				return ErrServerClosed
			}
		}
		pause = 0
		s.serveConn(nc)
	}
}

// serveConn serves one accepted connection: on the reactors when it is a
// plain socket (Linux), else on the portable engine.
func (s *Server) serveConn(nc net.Conn) {
	if s.adoptConn(nc) {
		return
	}
	pc := newPconn(s, nc)
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.pconns[pc] = struct{}{}
	s.mu.Unlock()
	go pc.serve()
}

func (s *Server) untrack(pc *pconn) {
	s.mu.Lock()
	delete(s.pconns, pc)
	s.mu.Unlock()
}

func (s *Server) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// RegisterOnShutdown registers f to be called when the first Shutdown or
// Close begins, before the listeners close, on the caller's goroutine, in
// the order registered. A service registry uses it to withdraw the
// server's address while its connections drain; f should bound its own
// time (Shutdown's ctx does not reach it). Registered after shutdown
// began, f is never called.
func (s *Server) RegisterOnShutdown(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shutdown {
		s.onShutdown = append(s.onShutdown, f)
	}
}

// beginShutdown stops accepting: it runs the RegisterOnShutdown functions
// the first time, then closes the listeners, which ends every Serve. It
// returns the portable connections.
func (s *Server) beginShutdown() []*pconn {
	s.mu.Lock()
	var hooks []func()
	if !s.shutdown {
		s.shutdown = true
		close(s.done)
		hooks, s.onShutdown = s.onShutdown, nil
	}
	s.mu.Unlock()
	for _, f := range hooks {
		f()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for ln := range s.listeners {
		ln.Close()
	}
	pcs := make([]*pconn, 0, len(s.pconns))
	for pc := range s.pconns {
		pcs = append(pcs, pc)
	}
	return pcs
}

// Shutdown stops the server gracefully: it stops accepting at once, stops
// reading requests (a request already arriving is read), lets the requests
// already received run and their replies go out, closes each connection
// once nothing is in flight on it, and returns nil once every connection
// is closed; the RegisterOnShutdown functions run before all that. If ctx
// ends first, it closes everything as Close does and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	for _, pc := range s.beginShutdown() {
		pc.shutdown()
	}
	s.reactorDrain()
	pause := time.Millisecond
	timer := time.NewTimer(pause)
	defer timer.Stop()
	for {
		s.mu.Lock()
		open := len(s.pconns)
		s.mu.Unlock()
		if open+s.reactorOpen() == 0 {
			s.stopAll()
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
	pcs := s.beginShutdown()
	s.cancel()
	for _, pc := range pcs {
		pc.close()
	}
	s.stopAll()
	return nil
}

// stopAll stops the reactors and releases the workers. The workers leave
// as their methods return; Close does not wait for methods that ignore
// their ctx.
func (s *Server) stopAll() {
	s.reactorStop()
	s.cancel()
	s.stopQueue()
	s.mu.Lock()
	w := s.workers
	s.mu.Unlock()
	if w != nil {
		// No new task from here; idle workers leave now, busy ones when
		// their method returns.
		w.Release()
	}
	// No worker will start: what still waits in the queue is refused.
	s.refuseQueued("epollbatch: server closing")
}

// Stats returns figures of the server, both engines together.
func (s *Server) Stats() ServerStats {
	var st ServerStats
	s.reactorStats(&st)
	s.mu.Lock()
	w := s.workers
	st.Conns += len(s.pconns)
	s.mu.Unlock()
	st.InFlight += int(s.portable.inflight.Load())
	st.Writes += s.portable.writes.Load()
	st.Frames += s.portable.frames.Load()
	if w != nil {
		st.Workers = w.Running()
	}
	st.WorkersBusy = int(s.running.Load())
	st.Overloaded = s.overloaded.Load()
	st.Requests, st.Handoffs, st.Spills = s.requests.Load(), s.handoffs.Load(), s.spills.Load()
	st.Queued, st.Stalls = s.queued.Load(), s.stalls.Load()
	return st
}

// A replier takes the reply of a request a worker ran: a reactor's
// connection or a portable one. An empty out means a one-way request
// that has run. reqSize is the request's size, counted in flight.
type replier interface {
	reply(out *[]byte, reqSize int, h *protocol.Header)
}

// task is one request handed to a worker: where its reply goes, a copy
// of its bytes and the frame parsed from them. Tasks are pooled: handing
// one over allocates nothing.
type task struct {
	r         replier
	bp        *[]byte
	f         protocol.Frame // its sections alias *bp
	size      int            // the request's size, counted in flight
	next      *task          // the next request of the same batch, if any
	nextBatch *task          // the next batch in the queue (batch.go), on a batch's first task
	cost      time.Duration  // a queued batch's methods' times, on its first task
	queued    time.Time      // when a queued batch was queued, on its first task
	quick     bool           // a batch of quick requests (batch.go), on its first task
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

// acquire takes one of the WithWorkers slots: false when every one is
// taken. The count is the server's own, not the pool's: a worker that
// has sent its reply is not back in the pool until its task returns, a
// moment later, and the reply's caller may be quicker with its next
// request (see invoke).
func (s *Server) acquire() bool {
	limit := int32(s.opts.workers)
	for {
		n := s.running.Load()
		if n >= limit {
			return false
		}
		if s.running.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// invoke hands t, and the tasks linked from it, to a worker, within a
// slot taken by acquire; on an error (the pool is closed) the slot is
// given back and the tasks are still the caller's. When the pool is full
// of workers on their way back (see acquire), the tasks run on a
// goroutine of their own, still within the count.
func (s *Server) invoke(t *task) error {
	err := s.workers.Invoke(t)
	if errors.Is(err, ants.ErrPoolOverload) {
		go s.run(t)
		return nil
	}
	if err != nil {
		s.running.Add(-1)
	}
	return err
}

// submit hands t, and the n-1 tasks linked from it, to one worker. On failure
// the tasks are still the caller's (it answers each and gives it back
// with release) and submit returns the text of the error reply:
// WithWorkers workers are busy already, or the pool is closed.
func (s *Server) submit(t *task, n int, quick bool, cost time.Duration) (refusal string, ok bool) {
	if quick && s.enqueue(t, n, cost) {
		return "", true
	}
	t.quick = quick
	if !s.acquire() {
		s.overloaded.Add(int64(n))
		return fmt.Sprintf("epollbatch: server overloaded (%d workers busy)", s.opts.workers), false
	}
	if err := s.invoke(t); err != nil {
		s.overloaded.Add(int64(n))
		return "epollbatch: server closing", false
	}
	s.handoffs.Add(1)
	s.requests.Add(int64(n))
	return "", true
}

// release gives back a task that did not run.
func release(t *task) {
	putBuf(t.bp)
	*t = task{}
	taskPool.Put(t)
}

// run runs a batch on a worker: t and the tasks linked from it, one
// after another (batch.go says which requests share a worker). A worker
// of quick batches (or of the queue: t nil) then takes the queued
// batches before it goes back to the pool.
func (s *Server) run(t *task) {
	if t != nil && !t.quick {
		s.runBatch(t, false) // a request of its own
		return
	}
	s.quickBusy.Add(1)
	for {
		if t == nil {
			t = s.queue.pop()
		}
		if t == nil {
			s.quickBusy.Add(-1)
			s.running.Add(-1)
		} else if !s.runBatch(t, true) {
			t = nil
			continue // the slot is still held: the queue is not empty
		}
		// The slot is back, then the queue is looked at again: a batch
		// queued meanwhile is seen here or by the reactor that queued it
		// (enqueue).
		if testHookReleased != nil {
			testHookReleased()
		}
		if !s.queue.waiting() || !s.acquire() {
			return
		}
		s.quickBusy.Add(1)
		t = nil
	}
}

// runBatch runs t and the tasks linked from it, one after another. A
// batch that has taken longer than spillAfter hands the rest to another
// worker, if a slot is free: the costs it was formed on were wrong. The
// last request gives the worker's slot back, unless the worker is quick's
// (see run) and a batch waits in the queue; runBatch reports whether it
// did.
func (s *Server) runBatch(t *task, quick bool) (released bool) {
	start := time.Now()
	var now time.Duration // since start: time.Since reads one clock, time.Now two
	for t != nil {
		next := t.next
		t.next = nil
		if next != nil && now > spillAfter && s.acquire() {
			next.quick = quick
			if s.invoke(next) == nil {
				s.spills.Add(1)
				s.handoffs.Add(1)
				next = nil
			}
		}
		released = next == nil && (!quick || !s.queue.waiting())
		now = s.runOne(t, start, now, released, quick)
		t = next
	}
	return released
}

// runOne runs one request and hands its reply over; began is when it
// started, and runOne returns when it ended, both as times since the
// batch's start. The last gives the worker's
// slot back (and its count among the quick, for a quick worker) before
// its reply leaves: its caller's next request may come at once.
func (s *Server) runOne(t *task, start time.Time, began time.Duration, last, quick bool) time.Duration {
	out := getBuf()
	if ctx, err := incoming(s.ctx, &t.f); err != nil {
		if t.f.Type == protocol.TypeRequest {
			*out = service.AppendError((*out)[:0], &t.f.Header, fmt.Sprintf("epollbatch: metadata of %s: %v", t.f.Method, err))
		}
	} else {
		*out = s.reg.HandleWith(ctx, &t.f, (*out)[:0], service.Interceptor(s.opts.intercept))
	}
	ended := time.Since(start)
	s.costs.note(s.reg, t.f.Method, ended-began)
	putBuf(t.bp)
	if last {
		if quick {
			s.quickBusy.Add(-1)
		}
		s.running.Add(-1)
	}
	t.r.reply(out, t.size, &t.f.Header) // the task's header: a copy would escape through the interface
	*t = task{}
	taskPool.Put(t)
	return ended
}

// admitReply applies WithMaxBytesInFlight to a reply of n bytes, on a
// connection that holds held bytes besides (requests in flight, replies
// not yet written), waiting of them replies. A reply that would take the
// connection past limit while other replies wait to be written is
// refused: *out becomes a short error reply instead, so that a client
// that does not read cannot make the server hold more than the limit.
// One reply is always let in when none waits, however large (up to the
// frame limit). It returns out's size after.
func admitReply(out *[]byte, h *protocol.Header, n, held, waiting, limit int64) int64 {
	if held+n <= limit || waiting == 0 {
		return n
	}
	if cap(*out) > maxPooledBuf { // do not keep a large reply's buffer for a short error
		*out = make([]byte, 0, 256)
	}
	*out = service.AppendError((*out)[:0], h, fmt.Sprintf(
		"epollbatch: reply of %d bytes refused: the connection already holds %d bytes not yet written (WithMaxBytesInFlight %d); the client is not reading its replies",
		n, held, limit))
	return int64(len(*out))
}
