package epollbatch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// The server's epoll engine: the sub-reactors (loops) that own the
// connections. The main reactor is Serve's accept loop (server.go): it
// accepts through the listener, and hands each plain socket over here.

// reactorServer is the epoll engine's part of a Server.
type reactorServer struct {
	loops []*loop    // started by the first connection they get; guarded by Server.mu
	next  int        // round robin over the loops
	rings *sync.Pool // lent to busy connections (see conn.ring)
}

func (r *reactorServer) init(o serverOptions) {
	r.rings = newRingPool(ringSizeFor(o.maxInFlight))
}

// startLoops starts the sub-reactors, once.
func (s *Server) startLoops() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return ErrServerClosed
	}
	if s.reactor.loops != nil {
		return nil
	}
	for range s.opts.reactors {
		l, err := newLoop(s.opts.logger, s.opts.idleTimeout, s.opts.busyPoll)
		if err != nil {
			for _, l := range s.reactor.loops {
				l.stop()
			}
			s.reactor.loops = nil
			return err
		}
		s.reactor.loops = append(s.reactor.loops, l)
		go l.run()
	}
	return nil
}

// adoptConn gives an accepted connection to the reactors if it is a plain
// socket: the reactor takes a copy of its descriptor and nc is closed.
// It reports false for a connection the portable engine must serve.
func (s *Server) adoptConn(nc net.Conn) bool {
	if s.opts.portable {
		return false
	}
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return false
	}
	if err := s.startLoops(); err != nil {
		nc.Close()
		return true
	}
	fd, err := connFd(nc)
	if err != nil {
		// No descriptor for the copy (out of descriptors): the portable
		// engine serves the connection on Go's own, rather than drop it.
		s.opts.logger.Warn("epollbatch: cannot copy the connection's descriptor; serving it on the portable engine", "err", err)
		return false
	}
	nc.Close() // the copy lives on
	s.adopt(fd)
	return true
}

// adopt gives an accepted socket to a sub-reactor.
func (s *Server) adopt(fd int) {
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) // no Nagle delays on replies; fails harmlessly on Unix sockets
	s.mu.Lock()
	loops := s.reactor.loops
	if s.shutdown || len(loops) == 0 {
		s.mu.Unlock()
		unix.Close(fd)
		return
	}
	l := loops[s.reactor.next%len(loops)]
	s.reactor.next++
	s.mu.Unlock()
	c := newServerConn(l, fd, &serverSide{s: s}, s.opts.maxFrameSize, s.opts.bufSize, s.reactor.rings)
	c.maxInFlight, c.maxBytes = int64(s.opts.maxInFlight), int64(s.opts.maxBytesInFlight)
	if err := l.attach(c); err != nil {
		unix.Close(fd)
	}
}

func (s *Server) loops() []*loop {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reactor.loops
}

// reactorDrain asks every reactor connection to stop reading requests.
func (s *Server) reactorDrain() {
	for _, l := range s.loops() {
		l.drainAll()
	}
}

// reactorOpen counts the reactors' connections, attached or on their way.
func (s *Server) reactorOpen() int {
	n := 0
	for _, l := range s.loops() {
		n += int(l.conns.Load()) + l.pendingAdds()
	}
	return n
}

// reactorStop closes every reactor connection and stops the reactors.
func (s *Server) reactorStop() {
	for _, l := range s.loops() {
		l.stop()
	}
}

func (s *Server) reactorStats(st *ServerStats) {
	for _, l := range s.loops() {
		st.Conns += int(l.conns.Load())
		st.Writes += l.writes.Load()
		st.Frames += l.frames.Load()
		st.InFlight += int(l.inflight.Load())
	}
}

// serverSide handles a server connection's frames: a request goes to a
// worker with a copy of its bytes, alone or in a batch (batch.go); a ping
// is answered on the spot.
type serverSide struct {
	s *Server
	b batch // the requests of this read that share a worker, so far
}

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
		t.r, t.size = c, len(raw)
		t.bp = getBuf()
		*t.bp = append((*t.bp)[:0], raw...) // the input buffer moves on; the worker gets a copy
		t.f = *f
		rebase(&t.f, *t.bp) // parsed once, here, against this server's frame limit
		cost, ok := ss.s.costs.batchable(t.f.Method)
		if !ok {
			ss.submit(c, t, 1, false, 0) // a worker of its own
			return
		}
		if ss.b.add(t, cost) {
			b, n, cost := ss.b.take()
			ss.submit(c, b, n, true, cost)
		}
	case protocol.TypePing:
		out := getBuf()
		*out, _ = protocol.AppendFrame((*out)[:0], &protocol.Header{Type: protocol.TypePong, Seq: f.Seq}, "", "", nil)
		c.inBytes.Add(int64(len(*out) - len(raw)))
		c.sendLocal(out)
	default:
		c.close(fmt.Errorf("epollbatch: unexpected %s frame from a client", f.Type))
	}
}

// parsed: the frames of one read are handed over; so is the batch.
func (ss *serverSide) parsed(c *conn) {
	if ss.b.head != nil {
		b, n, cost := ss.b.take()
		ss.submit(c, b, n, true, cost)
	}
}

// submit hands t and the tasks linked from it to one worker. When every
// worker is busy, or the pool is closed, each is answered now, from the
// reactor, which never waits for a worker.
func (ss *serverSide) submit(c *conn, t *task, n int, quick bool, cost time.Duration) {
	msg, ok := ss.s.submit(t, n, quick, cost)
	if ok {
		return
	}
	for t != nil {
		next := t.next
		if t.f.Type == protocol.TypeOneway { // no one to tell: dropped, and logged
			ss.s.opts.logger.Debug("epollbatch: one-way request dropped", "method", string(t.f.Method), "reason", msg)
			c.settle(1, int64(t.size))
		} else {
			out := getBuf()
			*out = service.AppendError((*out)[:0], &t.f.Header, msg)
			c.inBytes.Add(int64(len(*out) - t.size))
			c.sendLocal(out)
		}
		release(t)
		t = next
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

// reply queues a worker's reply (see replier) for the reactor to write.
func (c *conn) reply(out *[]byte, reqSize int, h *protocol.Header) {
	if len(*out) == 0 { // one-way: done
		putBuf(out)
		c.settle(1, int64(reqSize))
		c.l.schedule(c) // reading may resume, or the connection finish
		return
	}
	c.replyMu.Lock()
	n := admitReply(out, h, int64(len(*out)), c.inBytes.Load()-int64(reqSize), c.outBytes.Load(), c.maxBytes)
	c.inBytes.Add(n - int64(reqSize))
	c.outBytes.Add(n)
	c.replyMu.Unlock()
	c.send(context.Background(), out) // fails only when the connection is closed
}
