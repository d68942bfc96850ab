package pipeline

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// sconn is one connection of a server. Its reader reads requests and starts
// a goroutine per request; replies go into wbuf in the order they finish,
// and the writer writes what has gathered there, in one write.
//
//	reader ──▶ go handle ──▶ go handle ...      (as many as in flight)
//	               │             │
//	               ▼             ▼
//	             wbuf (replies, in the order they finish) ──writer──▶ socket
//
// Back-pressure: a request counts as in flight from the moment it is read
// until its reply is written (a one-way request: until it has run). At
// WithMaxInFlight requests, or WithMaxBytesInFlight bytes of requests and
// replies not yet written, the reader stops reading until the writer gets
// replies out. A client that never reads its replies thus stops being
// read, and the idle timeout ends it.
//
// Stopping the reader is not enough on its own: a few small requests can
// ask for large replies. So a reply counts against the same bound when it
// is queued: one that would take the connection past it while other
// replies still wait to be written is refused, and a short error reply
// goes in its place (see queue). The server's memory for a connection
// stays within the bound, replies included.
type sconn struct {
	s  *Server
	nc net.Conn

	mu         sync.Mutex
	inflight   int    // requests read whose reply is not yet written
	bytes      int    // their frames (until the reply takes its place), and the replies not yet written
	unwritten  int    // replies queued or being written
	wbuf       []byte // replies waiting for the writer
	frames     int    // how many
	reading    bool   // a request has begun to arrive
	readerDone bool   // the reader has stopped: end of stream, or shutdown
	stopping   bool   // shutdown: read no more requests
	closed     bool
	waiting    bool          // the reader waits for in-flight room
	resume     chan struct{} // wakes the reader; capacity 1
	wake       chan struct{} // wakes the writer; capacity 1
	done       chan struct{} // closed when the connection closes
}

func newSconn(s *Server, nc net.Conn) *sconn {
	return &sconn{
		s:      s,
		nc:     nc,
		resume: make(chan struct{}, 1),
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
}

// serve runs the connection: the writer on a goroutine of its own, the
// reader on this one.
func (sc *sconn) serve() {
	go sc.writeLoop()
	sc.readLoop()
}

// readLoop reads requests until the stream ends, an error, or shutdown.
func (sc *sconn) readLoop() {
	br := bufio.NewReaderSize(sc.nc, sc.s.opts.bufSize)
	for {
		if !sc.admit() {
			return
		}
		if _, err := br.Peek(1); err != nil {
			sc.readerStop(err)
			return
		}
		sc.mu.Lock()
		sc.reading = true // from its first byte on, Shutdown waits for this request
		sc.mu.Unlock()

		bp := bufPool.Get().(*[]byte)
		var req protocol.Frame
		buf, err := protocol.ReadFrame(br, sc.s.opts.maxFrameSize, &req, (*bp)[:0])
		*bp = buf
		if err != nil {
			putBuf(bp)
			sc.readerStop(err)
			return
		}
		size := req.Size()
		sc.mu.Lock()
		sc.reading = false
		sc.inflight++
		sc.bytes += size
		sc.mu.Unlock()

		switch req.Type {
		case protocol.TypeRequest, protocol.TypeOneway:
			go sc.handle(req, bp, size)
		case protocol.TypePing:
			pong, _ := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypePong, Seq: req.Seq}, "", "", nil)
			putBuf(bp)
			sc.queue(pong, size, nil)
		default:
			putBuf(bp)
			sc.s.opts.logger.Debug("pipeline: unexpected frame from a client", "remote", sc.nc.RemoteAddr(), "type", req.Type)
			sc.close()
			return
		}
	}
}

// admit waits until the connection may take one more request, and sets the
// read deadline: the idle timeout while nothing is in flight, none while
// replies are due (the client is waiting for us, not idle). It reports false
// when the connection is closing or shutting down.
func (sc *sconn) admit() bool {
	sc.mu.Lock()
	for !sc.closed && !sc.stopping &&
		(sc.inflight >= sc.s.opts.maxInFlight || (sc.inflight > 0 && sc.bytes >= sc.s.opts.maxBytesInFlight)) {
		sc.waiting = true
		sc.mu.Unlock()
		select {
		case <-sc.resume:
		case <-sc.done:
		}
		sc.mu.Lock()
	}
	sc.waiting = false
	if sc.closed || sc.stopping {
		sc.mu.Unlock()
		sc.readerStop(nil)
		return false
	}
	sc.setReadDeadlineLocked()
	sc.mu.Unlock()
	return true
}

// setReadDeadlineLocked: the idle timeout runs while nothing is in flight.
func (sc *sconn) setReadDeadlineLocked() {
	if sc.inflight == 0 {
		sc.nc.SetReadDeadline(time.Now().Add(sc.s.opts.idleTimeout))
	} else {
		sc.nc.SetReadDeadline(time.Time{})
	}
}

// readerStop records that the reader stopped. An end of stream (the client
// closed or half-closed) or shutdown lets the requests in flight finish and
// their replies go out before the connection closes; anything else (bad
// input, a frame too large, the idle timeout) closes it now.
func (sc *sconn) readerStop(err error) {
	sc.mu.Lock()
	graceful := err == nil || errors.Is(err, io.EOF) || (sc.stopping && errors.Is(err, os.ErrDeadlineExceeded))
	sc.readerDone = true
	sc.reading = false
	idle := sc.inflight == 0
	sc.mu.Unlock()
	if err != nil && !graceful {
		sc.s.logDrop(sc.nc, err)
	}
	if !graceful || idle {
		sc.close()
	}
}

// handle runs one request on its own goroutine and queues its reply.
func (sc *sconn) handle(req protocol.Frame, bp *[]byte, size int) {
	out := bufPool.Get().(*[]byte)
	*out = sc.s.reg.Handle(sc.s.ctx, &req, (*out)[:0])
	h := req.Header
	putBuf(bp) // the request's bytes are no longer needed
	sc.queue(*out, size, &h)
	putBuf(out)
}

// queue appends a reply (copied) to wbuf for the writer, in place of the
// request it answers, whose size was reqSize. An empty reply (a one-way
// request) ends the request's time in flight at once.
//
// A reply to the request req (nil for a pong) that would take the bytes
// not yet written past WithMaxBytesInFlight, while another reply still
// waits to be written, is refused: an error reply of a few hundred bytes
// goes in its place, so the caller learns why, and the server holds no
// more for a client that does not read. When no other reply waits, the
// reply goes, however large: a single large reply always works.
func (sc *sconn) queue(reply []byte, reqSize int, req *protocol.Header) {
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.bytes -= reqSize
	if len(reply) == 0 {
		sc.inflight--
		sc.afterReleaseLocked()
		return // afterReleaseLocked unlocked
	}
	start := len(sc.wbuf)
	if limit := sc.s.opts.maxBytesInFlight; req != nil && sc.unwritten > 0 && sc.bytes+len(reply) > limit {
		sc.wbuf = service.AppendError(sc.wbuf, req, fmt.Sprintf(
			"pipeline: reply of %d bytes refused: the connection already holds %d bytes not yet written (WithMaxBytesInFlight %d); the client is not reading its replies",
			len(reply), sc.bytes, limit))
	} else {
		sc.wbuf = append(sc.wbuf, reply...)
	}
	sc.frames++
	sc.unwritten++
	sc.bytes += len(sc.wbuf) - start
	sc.mu.Unlock()
	select {
	case sc.wake <- struct{}{}:
	default:
	}
}

// afterReleaseLocked runs, with mu held, after requests left flight: the
// reader may go on, the idle timeout may start, or, the reader having
// stopped, the connection closes once nothing is in flight. It unlocks mu.
//
// The idle timeout starts even when a request is half read: its rest must
// come within the timeout, as when it began with nothing in flight, or a
// client could hold the connection for ever with half a frame.
func (sc *sconn) afterReleaseLocked() {
	if sc.waiting {
		select {
		case sc.resume <- struct{}{}:
		default:
		}
	}
	if sc.inflight == 0 && !sc.readerDone && !sc.stopping {
		sc.setReadDeadlineLocked()
	}
	closeNow := sc.inflight == 0 && sc.readerDone
	sc.mu.Unlock()
	if closeNow {
		sc.close()
	}
}

// writeLoop writes the queued replies: everything queued since the last
// write goes out in one write.
func (sc *sconn) writeLoop() {
	var spare []byte
	for {
		select {
		case <-sc.wake:
		case <-sc.done:
			return
		}
		runtime.Gosched() // let the senders that are ready queue their frames too
		sc.mu.Lock()
		if len(sc.wbuf) == 0 { // nothing queued: keep the buffer, do not swap
			sc.mu.Unlock()
			continue
		}
		buf, frames := sc.wbuf, sc.frames
		// Swap in the spare buffer: senders fill it while buf is written.
		// (spare is never wbuf: only buffers taken out here become spare.)
		sc.wbuf, sc.frames = spare[:0], 0
		sc.mu.Unlock()
		if err := sc.write(buf); err != nil {
			sc.s.logDrop(sc.nc, err)
			sc.close()
			return
		}
		sc.s.flushes.Add(1)
		sc.s.frames.Add(int64(frames))
		sc.mu.Lock()
		sc.inflight -= frames
		sc.unwritten -= frames
		sc.bytes -= len(buf)
		sc.afterReleaseLocked()
		// Keep the buffer for the next swap only if it is small: while the
		// next batch is written, the spare fills with the one after it, and
		// the two together must stay near the bound, not twice it.
		if cap(buf) <= sc.s.opts.maxBytesInFlight/4 {
			spare = buf
		} else {
			spare = nil
		}
	}
}

// write writes buf. A client that takes none of it for the idle timeout
// is gone; one that takes it slowly, but steadily, gets it all, however
// long that takes: each bit of progress gives it another idle timeout.
func (sc *sconn) write(buf []byte) error {
	for {
		sc.nc.SetWriteDeadline(time.Now().Add(sc.s.opts.idleTimeout))
		n, err := sc.nc.Write(buf)
		buf = buf[n:]
		if err == nil || n == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
	}
}

// shutdown stops reading requests: at once if none is arriving, else after
// the one arriving. The connection closes when nothing is in flight.
func (sc *sconn) shutdown() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.stopping = true
	if !sc.reading {
		sc.nc.SetReadDeadline(time.Unix(1, 0)) // wake the reader; it sees stopping
	}
	if sc.waiting {
		select {
		case sc.resume <- struct{}{}:
		default:
		}
	}
}

// close closes the connection now; replies not yet written are lost.
func (sc *sconn) close() {
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.closed = true
	close(sc.done)
	sc.wbuf = nil
	sc.mu.Unlock()
	sc.nc.Close()
	sc.s.untrack(sc)
}

func putBuf(bp *[]byte) {
	if cap(*bp) <= maxPooledBuf {
		bufPool.Put(bp)
	}
}
