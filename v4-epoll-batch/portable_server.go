package epollbatch

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// The portable engine, server side: a connection served by two goroutines
// over its net.Conn, for what the reactors cannot take (TLS, a listener
// whose connections have no descriptor, every system without epoll). It
// is v3's server connection with v4's rules: requests go to the same
// workers, and the same limits hold, replies included.
//
//	reader ──▶ Server.submit ──▶ workers ──▶ pconn.reply
//	                                            │
//	             wbuf (replies, as they finish) ◀┘ ──writer──▶ socket

// pconn is one connection of the portable engine.
//
// Back-pressure: a request (or ping) counts as in flight from the moment
// it is read until its reply is written (a one-way request: until it has
// run). At WithMaxInFlight requests, or WithMaxBytesInFlight bytes of
// requests and replies not yet written, the reader stops reading until
// the writer gets replies out.
type pconn struct {
	s  *Server
	nc net.Conn

	mu         sync.Mutex
	inflight   int    // requests read whose reply is not yet written
	bytes      int64  // their bytes: the request, then its reply (as conn.inBytes)
	outBytes   int64  // replies in wbuf
	wbuf       []byte // replies waiting for the writer
	frames     int    // how many
	reading    bool   // a request has begun to arrive
	readerDone bool   // the reader has stopped: end of stream, or shutdown
	stopping   bool   // shutdown: read no more requests
	closed     bool
	waiting    bool          // the reader waits for room
	resume     chan struct{} // wakes the reader; capacity 1
	wake       chan struct{} // wakes the writer; capacity 1
	done       chan struct{} // closed when the connection closes
}

func newPconn(s *Server, nc net.Conn) *pconn {
	return &pconn{
		s:      s,
		nc:     nc,
		resume: make(chan struct{}, 1),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
}

// serve runs the connection: the writer on a goroutine of its own, the
// reader on this one.
func (pc *pconn) serve() {
	go pc.writeLoop()
	pc.readLoop()
}

// readLoop reads requests until the stream ends, an error, or shutdown.
func (pc *pconn) readLoop() {
	br := bufio.NewReaderSize(pc.nc, min(pc.s.opts.bufSize, portableReadBuf))
	for {
		if !pc.admit() {
			return
		}
		if _, err := br.Peek(1); err != nil {
			pc.readerStop(err)
			return
		}
		pc.mu.Lock()
		pc.reading = true // from its first byte on, Shutdown waits for this request
		pc.mu.Unlock()

		t := taskPool.Get().(*task)
		t.bp = getBuf()
		buf, err := protocol.ReadFrame(br, pc.s.opts.maxFrameSize, &t.f, (*t.bp)[:0])
		*t.bp = buf
		if err != nil {
			release(t)
			pc.readerStop(err)
			return
		}
		t.r, t.size = pc, t.f.Size()
		pc.mu.Lock()
		if pc.closed { // the writer failed meanwhile: nothing is counted any more
			pc.mu.Unlock()
			release(t)
			return
		}
		pc.reading = false
		pc.inflight++
		pc.bytes += int64(t.size)
		pc.s.portable.inflight.Add(1) // under mu, as close's subtraction
		pc.mu.Unlock()

		switch t.f.Type {
		case protocol.TypeRequest, protocol.TypeOneway:
			msg, ok := pc.s.submit(t, 1, false, 0) // t is not ours after this, unless refused
			if ok {
				continue
			}
			h, size := t.f.Header, t.size
			out := getBuf()
			if t.f.Type == protocol.TypeOneway { // no one to tell: dropped, and logged
				pc.s.opts.logger.Debug("epollbatch: one-way request dropped", "method", string(t.f.Method), "reason", msg)
			} else {
				*out = service.AppendError((*out)[:0], &h, msg)
			}
			release(t)
			pc.reply(out, size, &h)
		case protocol.TypePing:
			out := getBuf()
			*out, _ = protocol.AppendFrame((*out)[:0], &protocol.Header{Type: protocol.TypePong, Seq: t.f.Seq}, "", "", nil)
			size := t.size
			release(t)
			pc.reply(out, size, nil) // a pong is never refused: it is as small as its ping
		default:
			pc.s.opts.logger.Debug("epollbatch: unexpected frame from a client", "type", t.f.Type)
			release(t)
			pc.close()
			return
		}
	}
}

// portableReadBuf caps the reader's buffer: the portable engine holds it
// for the connection's whole life (a frame larger than it is read into a
// buffer of its own, grown as its bytes arrive).
const portableReadBuf = 4 << 10

// admit waits until the connection may take one more request, and sets the
// read deadline: the idle timeout while nothing is in flight, none while
// replies are due. It reports false when the connection is closing or
// shutting down. Reading resumes below the limits; the reactor's 7/8
// hysteresis saves epoll_ctl calls, which a goroutine does not make.
func (pc *pconn) admit() bool {
	pc.mu.Lock()
	for !pc.closed && !pc.stopping && pc.inflight > 0 &&
		(pc.inflight >= pc.s.opts.maxInFlight || pc.bytes >= int64(pc.s.opts.maxBytesInFlight)) {
		pc.waiting = true
		pc.mu.Unlock()
		select {
		case <-pc.resume:
		case <-pc.done:
		}
		pc.mu.Lock()
	}
	pc.waiting = false
	if pc.closed || pc.stopping {
		pc.mu.Unlock()
		pc.readerStop(nil)
		return false
	}
	pc.setReadDeadlineLocked()
	pc.mu.Unlock()
	return true
}

// setReadDeadlineLocked: the idle timeout runs while nothing is in flight.
func (pc *pconn) setReadDeadlineLocked() {
	if pc.inflight == 0 {
		pc.nc.SetReadDeadline(time.Now().Add(pc.s.opts.idleTimeout))
	} else {
		pc.nc.SetReadDeadline(time.Time{})
	}
}

// readerStop records that the reader stopped. An end of stream (the client
// closed or half-closed) or shutdown lets the requests in flight finish and
// their replies go out before the connection closes; anything else (bad
// input, a frame too large, the idle timeout) closes it now.
func (pc *pconn) readerStop(err error) {
	pc.mu.Lock()
	graceful := err == nil || errors.Is(err, io.EOF) || (pc.stopping && errors.Is(err, os.ErrDeadlineExceeded))
	pc.readerDone = true
	pc.reading = false
	idle := pc.inflight == 0
	pc.mu.Unlock()
	if err != nil && !graceful && !pc.s.closing() && !errors.Is(err, os.ErrDeadlineExceeded) {
		pc.s.opts.logger.Debug("epollbatch: connection closed", "remote", pc.nc.RemoteAddr(), "err", err)
	}
	if !graceful || idle {
		pc.close()
	}
}

// reply queues a reply for the writer, in place of the request it answers,
// whose size was reqSize (see replier); h is nil for a pong, which is
// never refused. An empty reply (a one-way request) ends the request's
// time in flight at once. Any goroutine.
func (pc *pconn) reply(out *[]byte, reqSize int, h *protocol.Header) {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		putBuf(out)
		return
	}
	if len(*out) == 0 {
		pc.bytes -= int64(reqSize)
		pc.inflight--
		pc.s.portable.inflight.Add(-1)
		pc.afterReleaseLocked()
		putBuf(out)
		return // afterReleaseLocked unlocked
	}
	n := int64(len(*out))
	if h != nil {
		n = admitReply(out, h, n, pc.bytes-int64(reqSize), pc.outBytes, int64(pc.s.opts.maxBytesInFlight))
	}
	pc.bytes += n - int64(reqSize)
	pc.outBytes += n
	pc.wbuf = append(pc.wbuf, *out...)
	pc.frames++
	pc.mu.Unlock()
	putBuf(out)
	select {
	case pc.wake <- struct{}{}:
	default:
	}
}

// afterReleaseLocked runs, with mu held, after requests left flight: the
// reader may go on, the idle timeout may start, or, the reader having
// stopped, the connection closes once nothing is in flight. It unlocks mu.
func (pc *pconn) afterReleaseLocked() {
	if pc.waiting {
		select {
		case pc.resume <- struct{}{}:
		default:
		}
	}
	// The idle timeout starts even while a request is half read: its rest
	// must come within it, or a peer could keep the connection for ever
	// with half a frame sent while another request was in flight.
	if pc.inflight == 0 && !pc.readerDone && !pc.stopping {
		pc.setReadDeadlineLocked()
	}
	closeNow := pc.inflight == 0 && pc.readerDone
	pc.mu.Unlock()
	if closeNow {
		pc.close()
	}
}

// writeLoop writes the queued replies: everything queued since the last
// write goes out in one write.
func (pc *pconn) writeLoop() {
	var spare []byte
	for {
		select {
		case <-pc.wake:
		case <-pc.done:
			return
		}
		runtime.Gosched() // let the workers that are ready queue their replies too
		pc.mu.Lock()
		if len(pc.wbuf) == 0 {
			pc.mu.Unlock()
			continue
		}
		buf, frames := pc.wbuf, pc.frames
		pc.wbuf, pc.frames = spare[:0], 0 // the workers fill the spare while buf is written
		pc.mu.Unlock()
		// A client that takes no reply for the idle timeout is gone.
		pc.nc.SetWriteDeadline(time.Now().Add(pc.s.opts.idleTimeout))
		if _, err := pc.nc.Write(buf); err != nil {
			if !pc.s.closing() {
				pc.s.opts.logger.Debug("epollbatch: connection closed", "remote", pc.nc.RemoteAddr(), "err", err)
			}
			pc.close()
			return
		}
		pc.s.portable.writes.Add(1)
		pc.s.portable.frames.Add(int64(frames))
		pc.mu.Lock()
		if pc.closed { // close has taken everything off the counts
			pc.mu.Unlock()
			return
		}
		pc.inflight -= frames
		pc.bytes -= int64(len(buf))
		pc.outBytes -= int64(len(buf))
		pc.s.portable.inflight.Add(-int64(frames))
		pc.afterReleaseLocked()
		if cap(buf) <= pc.s.opts.maxBytesInFlight {
			spare = buf // bounded by the bytes in flight
		} else {
			spare = nil // one reply larger than the bound: do not keep its buffer
		}
	}
}

// shutdown stops reading requests: at once if none is arriving, else after
// the one arriving. The connection closes when nothing is in flight.
func (pc *pconn) shutdown() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.stopping = true
	if !pc.reading {
		pc.nc.SetReadDeadline(time.Unix(1, 0)) // wake the reader; it sees stopping
	}
	if pc.waiting {
		select {
		case pc.resume <- struct{}{}:
		default:
		}
	}
}

// close closes the connection now; replies not yet written are lost.
func (pc *pconn) close() {
	pc.mu.Lock()
	if pc.closed {
		pc.mu.Unlock()
		return
	}
	pc.closed = true
	close(pc.done)
	pc.wbuf = nil
	pc.s.portable.inflight.Add(-int64(pc.inflight)) // replies that will never be written
	pc.inflight = 0
	pc.mu.Unlock()
	pc.nc.Close()
	pc.s.untrack(pc)
}
