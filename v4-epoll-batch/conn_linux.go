package epollbatch

// A reactor's connection. A request crosses three goroutines:
//
//	reactor: onReadable → parse → serverSide.frame → Server.submit (a copy of the request)
//	worker:  Server.run → Registry.HandleWith → conn.reply → ring.Put → loop.schedule
//	reactor: onScheduled → pump → flush → writev
//
// A client's connection is the same with the roles turned: callers put
// requests in the ring, the reactor writes them and decodes the replies.

import (
	"context"
	"errors"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/internal/poller"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/internal/ring"
)

// ringSizeFor is the ring a server connection needs: room for every reply
// its in-flight limit allows, so that a worker never waits for the
// reactor (a power of two, as the ring wants; 64 to 4096).
func ringSizeFor(maxInFlight int) int {
	n := 64
	for n < maxInFlight && n < 4096 {
		n *= 2
	}
	return n
}

// Limits of one readiness event and one writev.
const (
	maxFramesPerEvent = 64   // then the loop serves the other connections (fairness)
	iovMax            = 1024 // IOV_MAX on Linux: writev refuses more buffers (EINVAL)
)

// side is what a connection's frames mean: requests on a server, replies
// on a client. Its methods run on the loop's goroutine.
type side interface {
	attached(c *conn)
	// frame handles one complete frame; raw and f alias the input buffer
	// and are valid only during the call.
	frame(c *conn, raw []byte, f *protocol.Frame)
	// parsed: the frames read so far are all handed to frame.
	parsed(c *conn)
	// written: flush wrote n frames of the connection, bytes in all.
	written(c *conn, n, bytes int64)
	closed(c *conn, err error)
}

// parsed: a client has nothing to gather (the server's side batches
// requests for its workers).
func (cc *clientConn) parsed(*conn) {}

// conn is one connection of a loop.
//
// The loop's goroutine owns the socket and everything read from it: the
// input buffer, the interest set, the frames being written. Other
// goroutines (workers with replies, callers with requests) put frames in
// the ring and schedule the connection; the loop drains the ring into
// writev. No goroutine waits on an idle connection.
//
// Its states, and the epoll interest in each (EPOLLOUT is added in any
// state while a writev is partial, and removed once it is done):
//
//	attach ──▶ reading (IN|RDHUP) ── hold, at a limit ──▶ paused (none)
//	              │   ▲                                      │
//	              │   └──── resume, below 7/8 of them ───────┘
//	              │
//	              ├── Shutdown ──▶ draining (IN|RDHUP): the frame arriving, then eof
//	              ▼ end of stream, or RDHUP
//	           eof (none): the replies owed are written, then closed
//
// closed: out of epoll and the table, the socket closed. From eof once
// nothing is owed; from paused or eof on HUP or ERR (the peer is gone);
// from any state on an error, a bad frame, the idle timeout or Close.
type conn struct {
	l        *loop
	fd       int
	data     uint64 // the epoll data word: fd and generation
	side     side
	maxFrame int
	bufSize  int

	// Back-pressure (a server's connections; zero limits mean none):
	// requests read whose reply is not yet written, and their bytes.
	maxInFlight, maxBytes int64
	inflight, inBytes     atomic.Int64
	replyMu               sync.Mutex // serialises workers admitting replies (admitReply)

	// outBytes: the bytes of the frames queued to be written (in the ring
	// or in out) and not yet written. Producers add to it before they
	// queue a frame; flush takes off what it writes. A client bounds it
	// with WithMaxQueuedBytes, a server counts it in WithMaxBytesInFlight.
	outBytes atomic.Int64

	// Owned by the loop's goroutine.
	in        *[]byte // input: frames from r to w; nil while idle
	r, w      int
	inSmall   bool           // in is a small buffer holding only a partial frame (see releaseIn)
	frame     protocol.Frame // the frame parse decodes into; valid during side.frame
	interest  poller.Events
	out       []*[]byte // drained from the ring, not yet fully written
	outOff    int       // bytes of out[0] already written
	eof       bool      // no more requests: the peer half-closed, or shutdown
	draining  bool      // shutdown: finish the frame arriving, then eof
	drainLeft int       // draining: what is still to be handed over (received before, and the rest of its last frame)
	paused    bool      // reading stopped by back-pressure
	closed    bool

	// ring takes frames from other goroutines to the loop. A server
	// connection borrows one from rings while it has requests in flight:
	// the loop sets it in hold and gives it back once every reply is
	// written, when no worker can be putting into it, so an idle server
	// connection holds no ring. A client's is its own for its whole life.
	ring  *ring.Ring[*[]byte]
	rings *sync.Pool

	// Any goroutine.
	lastRead  atomic.Int64 // when bytes last arrived (Unix ns): a client's sign of life
	lastWrite atomic.Int64 // when a writev last wrote something (Unix ns)
	scheduled atomic.Bool
	closeReq  atomic.Pointer[error]
	drainReq  atomic.Bool
}

// newConn makes a client's connection, with a ring of ringSize slots.
func newConn(l *loop, fd int, s side, maxFrame, bufSize, ringSize int) (*conn, error) {
	r, err := ring.New[*[]byte](ringSize)
	if err != nil {
		return nil, err
	}
	return &conn{l: l, fd: fd, side: s, maxFrame: maxFrame, bufSize: bufSize, ring: r}, nil
}

// newServerConn makes a server's connection, which borrows its ring from
// rings while it is busy.
func newServerConn(l *loop, fd int, s side, maxFrame, bufSize int, rings *sync.Pool) *conn {
	return &conn{l: l, fd: fd, side: s, maxFrame: maxFrame, bufSize: bufSize, rings: rings}
}

// newRingPool makes the pool a server's connections borrow rings from.
func newRingPool(size int) *sync.Pool {
	return &sync.Pool{New: func() any {
		r, err := ring.New[*[]byte](size)
		if err != nil {
			panic(err) // size comes from ringSizeFor: a power of two
		}
		return r
	}}
}

// ringLen is what the ring holds; 0 when the connection has none.
func (c *conn) ringLen() int {
	if c.ring == nil {
		return 0
	}
	return c.ring.Len()
}

// returnRing gives a server connection's ring back once nothing is in
// flight: every request answered and its reply written, so no worker
// holds a reference to the ring (loop goroutine).
func (c *conn) returnRing() {
	if c.rings == nil || c.ring == nil || c.closed || c.inflight.Load() != 0 || len(c.out) != 0 || c.ring.Len() != 0 {
		return
	}
	c.rings.Put(c.ring)
	c.ring = nil
	c.l.ringsLent.Add(-1)
}

// inPool holds input buffers (see room and releaseIn).
var inPool sync.Pool

// smallPools hold the buffers a partial frame waits in at rest (see
// releaseIn), in three sizes, so that such a frame costs about its own
// bytes: at most 512 B, 4 KiB or 32 KiB; a larger one gets a buffer of
// its size.
var smallPools [3]sync.Pool

var smallSizes = [3]int{512, 4 << 10, 32 << 10}

func getSmall(n int) *[]byte {
	for i, size := range smallSizes {
		if n <= size {
			if bp, ok := smallPools[i].Get().(*[]byte); ok {
				return bp
			}
			b := make([]byte, 0, size)
			return &b
		}
	}
	b := make([]byte, 0, n)
	return &b
}

func putSmall(bp *[]byte) {
	for i, size := range smallSizes {
		if cap(*bp) == size {
			*bp = (*bp)[:0]
			smallPools[i].Put(bp)
			return
		}
	}
}

// send queues a frame for the loop to write (any goroutine). It waits
// while the ring is full, as long as ctx allows: producers never write to
// the socket themselves, so frames leave in the order they were queued.
func (c *conn) send(ctx context.Context, bp *[]byte) error {
	if err := c.ring.Put(ctx, bp); err != nil {
		putBuf(bp)
		return err
	}
	c.l.schedule(c)
	return nil
}

// trySend is send without waiting; false when the ring is full or closed.
func (c *conn) trySend(bp *[]byte) bool {
	if !c.ring.TryPut(bp) {
		return false
	}
	c.l.schedule(c)
	return true
}

// sendLocal queues a frame from the loop's own goroutine, which must never
// wait: behind whatever the ring holds, so that the order holds. The loop
// writes it before it next sleeps: every path that parses frames ends in
// pump.
func (c *conn) sendLocal(bp *[]byte) {
	if c.ring != nil {
		c.out = c.ring.Drain(c.out, c.ring.Cap())
	}
	c.outBytes.Add(int64(len(*bp)))
	c.out = append(c.out, bp)
}

// requestClose asks the loop to close c (any goroutine).
func (c *conn) requestClose(err error) {
	c.closeReq.CompareAndSwap(nil, &err)
	c.l.schedule(c)
}

// requestDrain asks the loop to stop reading requests once the frame
// arriving, if any, is complete (Shutdown; any goroutine).
func (c *conn) requestDrain() {
	c.drainReq.Store(true)
	c.l.schedule(c)
}

// onScheduled runs on the loop for a connection another goroutine asked
// about.
func (c *conn) onScheduled() {
	if errp := c.closeReq.Load(); errp != nil {
		c.close(*errp)
		return
	}
	if c.drainReq.Load() && !c.draining && !c.eof {
		c.draining = true
		c.drainLeft = c.w - c.r // what was received: its frames, and the start of the one arriving
		if c.r == c.w {         // nothing arriving: stop now
			c.stopReading()
		}
	}
	c.pump()
}

// onEvent handles what epoll reported for c. The unexpected comes first:
// a hang-up or an error while c no longer reads means the peer is gone
// and no reply can reach it; epoll reports HUP and ERR whatever the
// interest set, so leaving c open would have the loop told again and
// again, and spin. Otherwise HUP and ERR are read like data: the read
// returns the end of stream or the error, after whatever is still
// buffered.
func (c *conn) onEvent(ev *poller.Event) {
	if (ev.Hup || ev.Err) && (c.paused || c.eof) {
		c.close(errPeerGone)
		return
	}
	if ev.Readable || ev.RDHup || ev.Hup || ev.Err {
		c.onReadable()
	}
	if ev.Writable && !c.closed {
		c.pump()
	}
}

// onReadable reads what has arrived, without blocking, and hands every
// complete frame to the side. It stops after maxFramesPerEvent frames:
// level-triggered epoll reports the rest next time, after the other
// connections had their turn.
func (c *conn) onReadable() {
	if c.closed || c.paused || c.eof {
		return
	}
	frames := 0
	for frames < maxFramesPerEvent && !c.closed && !c.paused && !c.eof {
		if !c.room() {
			return
		}
		buf := *c.in
		n, err := read(c.fd, buf[c.w:])
		if n > 0 {
			c.w += n
			c.lastRead.Store(time.Now().UnixNano())
			c.touch()
			frames += c.parse()
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break
		}
		if err == nil { // end of stream: no more requests
			c.onEOF()
			break
		}
		c.close(os.NewSyscallError("read", err))
		return
	}
	c.pump()
	c.releaseIn()
}

// room makes sure the input buffer has space to read into: an idle
// connection has no buffer, a partial frame moves to the front, a frame
// larger than the buffer gets a larger one (its header is checked against
// the frame limit first). The buffer grows by doubling, not to the size
// the header announces at once: a peer that announces 16 MiB and sends
// 64 KiB costs at most twice what it sent.
func (c *conn) room() bool {
	if c.in == nil || c.inSmall {
		var in *[]byte
		if bp, ok := inPool.Get().(*[]byte); ok && cap(*bp) >= c.bufSize {
			in = bp
		} else {
			b := make([]byte, c.bufSize)
			in = &b
		}
		*in = (*in)[:cap(*in)]
		if c.in != nil { // the partial frame kept aside moves back in
			c.w = copy(*in, (*c.in)[c.r:c.w])
			c.r = 0
			putSmall(c.in)
			c.inSmall = false
		}
		c.in = in
	}
	if c.w < len(*c.in) {
		return true
	}
	if c.r > 0 { // move the partial frame to the front
		c.w = copy(*c.in, (*c.in)[c.r:c.w])
		c.r = 0
		if c.w < len(*c.in) {
			return true
		}
	}
	need, err := protocol.FrameLen((*c.in)[:c.w], c.maxFrame)
	if err != nil {
		c.close(err)
		return false
	}
	if need == 0 { // the header is not complete yet
		need = protocol.HeaderSize
	}
	bigger := make([]byte, min(max(need, len(*c.in)+1), 2*len(*c.in)))
	copy(bigger, (*c.in)[:c.w])
	c.in = &bigger
	return true
}

// releaseIn gives back the input buffer of a connection with nothing
// buffered: 10,000 idle connections hold no input buffers. A connection
// left with a partial frame much smaller than its buffer keeps only that
// frame's bytes, in a small buffer, until more arrive: a peer that sends
// a few bytes and stops costs a few bytes, not an input buffer.
func (c *conn) releaseIn() {
	if c.in == nil {
		return
	}
	if c.inSmall { // it held the last frames; they are handed over
		if c.r == c.w {
			putSmall(c.in)
			c.in, c.inSmall, c.r, c.w = nil, false, 0, 0
		}
		return
	}
	if n := c.w - c.r; n > 0 {
		if n > cap(*c.in)/8 || n >= c.bufSize/2 { // worth keeping the buffer; or room must fit it again
			return
		}
		small := getSmall(n)
		*small = append((*small)[:0], (*c.in)[c.r:c.w]...)
		c.putIn()
		c.in, c.r, c.w, c.inSmall = small, 0, n, true
		return
	}
	c.putIn()
	c.r, c.w = 0, 0
}

// putIn gives the input buffer back and leaves the connection without one.
func (c *conn) putIn() {
	if cap(*c.in) <= maxPooledBuf { // grown buffers too: the next large frame needs one again
		inPool.Put(c.in)
	}
	c.in = nil
}

// parse hands the complete frames in the input buffer to the side. It
// stops when the side paused reading (back-pressure) or shutdown asked
// for no more requests.
func (c *conn) parse() int {
	frames := 0
	f := &c.frame // reused: a Frame handed through the side interface would escape, one allocation a frame
	for c.r < c.w && !c.closed && !c.paused && !c.eof {
		k, err := protocol.Parse((*c.in)[c.r:c.w], c.maxFrame, f)
		if err != nil {
			c.close(err)
			break
		}
		if k == 0 {
			break
		}
		if c.draining && c.drainLeft <= 0 { // a request that began after Shutdown: not read
			c.stopReading()
			break
		}
		raw := (*c.in)[c.r : c.r+k]
		c.r += k
		c.drainLeft -= k
		frames++
		c.side.frame(c, raw, f)
		*f = protocol.Frame{} // its sections alias the input buffer, which must not stay reachable from here
		if c.draining && (c.r == c.w || c.drainLeft <= 0) {
			c.stopReading()
		}
	}
	c.side.parsed(c)
	return frames
}

// hold counts a request in flight; at the limit, reading stops. The
// connection has a ring from here until its replies are all written.
func (c *conn) hold(size int) {
	if c.ring == nil {
		c.ring = c.rings.Get().(*ring.Ring[*[]byte])
		c.l.ringsLent.Add(1)
	}
	n, b := c.inflight.Add(1), c.inBytes.Add(int64(size))
	c.l.inflight.Add(1)
	if c.maxInFlight > 0 && (n >= c.maxInFlight || b >= c.maxBytes) {
		c.paused = true
		c.setInterest(c.interest &^ (poller.Readable | poller.RDHup))
	}
}

// settle takes n answered requests and their bytes off the in-flight
// counts (any goroutine). Once the connection is closed its count is far
// below zero and the loop's count was settled by close.
func (c *conn) settle(n, bytes int64) {
	if c.inflight.Add(-n) >= 0 {
		c.l.inflight.Add(-n)
	}
	c.inBytes.Add(-bytes)
}

// closedInFlight marks the in-flight count of a closed connection.
const closedInFlight = math.MinInt64 / 2

// resume re-arms reading once the connection is back under 7/8 of its
// limits, after handing over the frames already buffered. It reports
// whether it handed any over: their answers (a pong, "overloaded") may
// now wait in out, and the caller must flush again. The gap is the
// hysteresis: at the edge, every reply would otherwise cost two
// epoll_ctl calls. (At half the limits, a server running a 1 ms method
// for 1,024 callers kept too few calls in flight: 131k calls/s against
// 171k at 7/8.)
func (c *conn) resume() bool {
	if !c.paused || c.closed || !c.belowLowWater() {
		return false
	}
	c.paused = false
	n := c.parse()
	if !c.paused && !c.eof && !c.closed {
		c.setInterest(c.interest | poller.Readable | poller.RDHup)
	}
	return n > 0
}

// belowLowWater: fewer than 7/8 of the requests allowed in flight (at
// least one fewer than the limit: with WithMaxInFlight(1), none), and at
// most 7/8 of the bytes.
func (c *conn) belowLowWater() bool {
	return c.inflight.Load() < max(1, c.maxInFlight*7/8) && c.inBytes.Load() <= c.maxBytes*7/8
}

// pump runs after anything that queued frames or made room: it writes
// what it can, lets reading resume (which may queue more answers, so it
// writes again), and closes a connection that is done (loop goroutine).
// Each round hands over buffered frames, so it ends.
func (c *conn) pump() {
	for !c.closed {
		c.flush()
		if !c.resume() {
			break
		}
	}
	c.finish()
	c.returnRing()
	if !c.closed {
		c.releaseIn() // resuming may have handed over the last buffered frame
	}
}

// onEOF: the peer sent its last byte. A partial frame is a truncated one;
// otherwise the requests in flight finish and their replies go out before
// the connection closes (half-close is not "close now").
func (c *conn) onEOF() {
	if c.r < c.w {
		c.close(protocol.ErrTruncated)
		return
	}
	c.stopReading()
}

// stopReading: no more frames will be read. Read interest goes, or
// level-triggered epoll would report the end of stream forever.
func (c *conn) stopReading() {
	c.eof = true
	c.setInterest(c.interest &^ (poller.Readable | poller.RDHup))
	c.finish()
}

// finish closes a connection that will read no more and owes nothing.
func (c *conn) finish() {
	if c.eof && !c.closed && c.inflight.Load() == 0 && len(c.out) == 0 && c.ringLen() == 0 {
		c.close(nil)
	}
}

// flush drains the ring into writev calls, at most iovMax frames each,
// until everything is written or the socket is full; then EPOLLOUT is
// armed and the loop resumes the write when the socket drains. Callers
// use pump, which also resumes reading and closes a finished connection.
func (c *conn) flush() {
	for !c.closed {
		if room := iovMax - len(c.out); room > 0 && c.ring != nil {
			c.out = c.ring.Drain(c.out, room)
		}
		if len(c.out) == 0 {
			c.setInterest(c.interest &^ poller.Writable)
			return
		}
		batch := c.out[:min(len(c.out), iovMax)]
		want := -c.outOff
		iov := c.l.iov[:0]
		for i, bp := range batch {
			b := *bp
			if i == 0 {
				b = b[c.outOff:]
			}
			iov = append(iov, unix.Iovec{Base: unsafe.SliceData(b)})
			iov[i].SetLen(len(b))
			want += len(*bp)
		}
		n, err := writev(c.fd, iov)
		clear(iov) // the iovec must not keep replies alive after the call
		c.l.iov = iov[:0]
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			if err == unix.EAGAIN {
				c.setInterest(c.interest | poller.Writable)
				return
			}
			c.close(os.NewSyscallError("writev", err))
			return
		}
		c.l.writes.Add(1)
		if n > 0 {
			c.lastWrite.Store(time.Now().UnixNano())
		}
		c.touch()
		full := n < want // the socket took less than offered: it is full
		done, doneBytes := 0, 0
		for n > 0 {
			left := len(*c.out[done]) - c.outOff
			if n < left {
				c.outOff += n
				break
			}
			n -= left
			doneBytes += len(*c.out[done])
			putBuf(c.out[done])
			c.outOff = 0
			done++
		}
		rest := copy(c.out, c.out[done:])
		clear(c.out[rest:]) // no stale pointers to written frames
		c.out = c.out[:rest]
		c.l.frames.Add(int64(done))
		c.outBytes.Add(-int64(doneBytes))
		c.side.written(c, int64(done), int64(doneBytes))
		if full { // wait for EPOLLOUT
			c.setInterest(c.interest | poller.Writable)
			return
		}
	}
}

// writev is unix.Writev without its allocations: unix.Writev builds a new
// iovec array on each call (grown from eight entries), which at 64 B with
// 1,024 callers made 13% of the server's garbage. The array here is the
// loop's, used again by every flush.
//
// Under -race it does for the race detector what unix.Writev does: a
// release before the call, which read acquires, so that what the writer
// did before a reply is ordered before what the reader does after it;
// and a read of every byte it offers.
func writev(fd int, iov []unix.Iovec) (int, error) {
	if raceEnabled {
		raceReleaseMerge(unsafe.Pointer(&ioSync))
		for i := range iov {
			if iov[i].Len > 0 {
				raceReadRange(unsafe.Pointer(iov[i].Base), int(iov[i].Len))
			}
		}
	}
	n, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(iov))), uintptr(len(iov)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// read is unix.Read and, under -race, the acquire that pairs with
// writev's release.
func read(fd int, p []byte) (int, error) {
	n, err := unix.Read(fd, p)
	if raceEnabled && err == nil {
		raceAcquire(unsafe.Pointer(&ioSync))
	}
	return n, err
}

func (c *conn) setInterest(ev poller.Events) {
	if ev == c.interest || c.closed {
		return
	}
	c.interest = ev
	if err := c.l.p.Mod(c.fd, ev, c.data); err != nil {
		c.close(os.NewSyscallError("epoll_ctl", err))
	}
}

// touch moves the idle deadline: the connection made progress.
func (c *conn) touch() {
	if c.l.wheel != nil && !c.closed {
		c.l.wheel.Set(c, time.Now().Add(c.l.idleTimeout))
	}
}

// errIdle: no progress for the idle timeout.
var errIdle = errors.New("epollbatch: idle timeout")

// onIdle runs when the idle deadline passed. A connection with requests in
// flight whose replies wait to be written is stuck on a client that does
// not read: closed. One whose methods are still running is not idle.
func (c *conn) onIdle() {
	if c.closed {
		return
	}
	if c.inflight.Load() > 0 && len(c.out) == 0 && c.ringLen() == 0 {
		c.touch()
		return
	}
	c.close(errIdle)
}

// close closes the connection now (loop goroutine). Frames not yet written
// are dropped; producers waiting on the ring are released.
func (c *conn) close(err error) {
	if c.closed {
		return
	}
	c.closed = true
	if c.l.wheel != nil {
		c.l.wheel.Remove(c)
	}
	c.l.p.Del(c.fd)
	c.l.table.Remove(c.fd)
	unix.Close(c.fd)
	c.l.conns.Add(-1)
	if n := c.inflight.Swap(closedInFlight); n > 0 { // replies that will never be written
		c.l.inflight.Add(-n)
	}
	if c.rings != nil && c.ring != nil {
		c.l.ringsLent.Add(-1)
	}
	c.dropBuffers(err)
	c.side.closed(c, err)
}

// closeNow closes a connection the loop never added (loop stopping).
func (c *conn) closeNow(err error) {
	c.closed = true
	unix.Close(c.fd)
	c.dropBuffers(err)
	c.side.closed(c, err)
}

func (c *conn) dropBuffers(err error) {
	if err == nil {
		err = ErrShutdown
	}
	if c.ring != nil { // a closed ring is not given back: workers may still put into it
		c.ring.Close(err)
		c.out = c.ring.Drain(c.out, c.ring.Cap())
	}
	for _, bp := range c.out {
		putBuf(bp)
	}
	c.out = nil
	c.r, c.w = 0, 0
	if c.inSmall {
		putSmall(c.in)
		c.in, c.inSmall = nil, false
	}
	c.releaseIn()
}
