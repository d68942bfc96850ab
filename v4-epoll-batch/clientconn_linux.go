package epollbatch

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// clientConn is the client's side of one connection: the pending map, as
// in v3, with the reactor's conn underneath instead of a reader and a
// writer goroutine.
//
// Whether a call's request left, when the connection fails (ErrNotSent or
// ErrConnLost): frames enter the ring with mu held, so that queued counts
// the bytes of the stream in the order the reactor writes them, and each
// call records where its frame ends (Call.sentEnd); the reactor counts the
// bytes of the frames it wrote whole (wrote). Once the connection is
// closed, on the reactor's goroutine, nothing more is written: a pending
// call whose frame ends past wrote was not written whole, and its server
// cannot have run it. So the pending calls are completed there, in
// closed, and not by fail, which may run on any goroutine while the
// reactor is still writing.
type clientConn struct {
	cl  *Client
	c   *conn
	seq atomic.Uint64

	// room is closed, and cleared, when written frames make room for
	// callers waiting on WithMaxQueuedBytes (see reserve).
	room atomic.Pointer[chan struct{}]
	dead chan struct{} // closed by fail

	mu        sync.Mutex
	pending   map[uint64]*Call
	err       error       // why the connection is dead; nil while alive
	queued    int64       // bytes of the frames put in the ring so far
	lastRecv  time.Time   // when a frame last arrived
	born      time.Time   // when the heartbeat started
	pingSent  time.Time   // when the outstanding ping left; zero if none
	heartbeat *time.Timer // a timer, not a goroutine, per connection

	wrote int64 // (reactor goroutine) bytes of the frames written whole so far
}

// startHeartbeat arms the ping timer (WithPingInterval; 0 disables).
func (cc *clientConn) startHeartbeat() {
	d := cc.cl.opts.pingInterval
	if d <= 0 {
		return
	}
	cc.mu.Lock()
	cc.lastRecv = time.Now()
	cc.born = cc.lastRecv
	cc.heartbeat = time.AfterFunc(d, cc.beat)
	cc.mu.Unlock()
}

// beat pings a connection silent for an interval, and declares it dead when
// a ping has gone unanswered for two more.
func (cc *clientConn) beat() {
	d := cc.cl.opts.pingInterval
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	now := time.Now()
	cc.lastRecv, cc.pingSent = alive(cc.lastRecv, cc.pingSent, cc.c.lastRead.Load())
	if !cc.pingSent.IsZero() && now.Sub(cc.pingSent) >= 2*d {
		cc.mu.Unlock()
		cc.fail(errNoPong)
		return
	}
	if cc.pingSent.IsZero() && now.Sub(cc.lastRecv) >= d {
		bp := getBuf()
		*bp, _ = protocol.AppendFrame((*bp)[:0], &protocol.Header{Type: protocol.TypePing, Seq: cc.seq.Add(1)}, "", "", nil)
		size := int64(len(*bp))
		cc.c.outBytes.Add(size) // a ping is not held back by WithMaxQueuedBytes
		if cc.c.trySend(bp) {
			cc.queued += size // in the stream, as a request's frame
			cc.pingSent = now
		} else {
			// The ring is full: no ping can go, and none is owed. Try
			// again at the next beat. Meanwhile the writes say whether
			// the server reads: if nothing could be written for three
			// intervals, it has stopped reading, and the connection is
			// dead, whatever is queued for it.
			cc.release(size)
			putBuf(bp)
			if last := max(cc.c.lastWrite.Load(), cc.born.UnixNano()); now.Sub(time.Unix(0, last)) >= 3*d {
				cc.mu.Unlock()
				cc.fail(errNotReading)
				return
			}
		}
	}
	cc.heartbeat.Reset(d)
	cc.mu.Unlock()
}

func (cc *clientConn) alive() bool {
	select { // without cc.mu: a receive that cannot wait takes no lock
	case <-cc.dead:
		return false
	default:
		return true
	}
}

func (cc *clientConn) pendingLen() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return len(cc.pending)
}

// send encodes the call's request, registers the call (before its frame
// can be written), and puts the frame in the connection's ring for the
// reactor to write. When the ring is full, Call and Notify wait as long as
// their ctx allows, and a Go call (async) waits on a goroutine of its own.
func (cc *clientConn) send(ctx context.Context, call *Call, typ protocol.Type, async bool) {
	seq := cc.seq.Add(1)
	bp := getBuf()
	frame, err := appendRequest(ctx, (*bp)[:0], typ, seq, cc.cl.opts.codec, call.ServiceMethod, call.Args)
	*bp = frame
	if err != nil {
		putBuf(bp)
		call.complete(fmt.Errorf("epollbatch: call %s: encoding the request: %w", call.ServiceMethod, err))
		return
	}
	size := int64(len(*bp))
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		putBuf(bp)
		call.complete(cc.cl.callError(ctx, call.ServiceMethod, err, false))
		return
	}
	if typ == protocol.TypeRequest {
		cc.pending[seq] = call
		if ctx.Done() != nil {
			// The watch holds the sequence ID, not the call (see v3).
			call.stopWait = context.AfterFunc(ctx, func() { cc.abandon(seq, ctx.Err(), true) })
		}
	}
	queued := false
	if cc.tryReserve(size) {
		if queued = cc.queue(call, bp, size); !queued {
			cc.release(size)
		}
	}
	cc.mu.Unlock()
	if queued {
		if typ == protocol.TypeOneway {
			call.complete(nil)
		}
		return
	}
	put := func() {
		err := cc.reserve(ctx, size)
		if err == nil {
			if err = cc.queueWait(ctx, call, bp, size); err != nil {
				cc.release(size)
			}
		} else {
			putBuf(bp)
		}
		if err != nil { // not queued: not sent
			if typ == protocol.TypeOneway {
				call.complete(cc.cl.callError(ctx, call.ServiceMethod, err, false))
				return
			}
			cc.abandon(seq, err, false)
			return
		}
		if typ == protocol.TypeOneway {
			call.complete(nil)
		}
	}
	if async {
		go put() // Go never blocks its caller
		return
	}
	put()
}

// queue puts the call's frame in the ring, with cc.mu held: the frames
// enter the ring, and so the stream, in the order queued counts them. It
// reports false, having done nothing, when the ring is full.
func (cc *clientConn) queue(call *Call, bp *[]byte, size int64) bool {
	if !cc.c.trySend(bp) {
		return false
	}
	cc.queued += size
	call.sentEnd = cc.queued
	return true
}

// queueWait is queue waiting for room in the ring, as long as ctx allows
// and the connection lives. Room usually comes within microseconds, as
// soon as the reactor runs: it first tries again after yielding, as the
// ring's own Put does; then it waits for the reactor to say it wrote
// (written), a wait cut short after a millisecond, as a guard. On an
// error the frame is given back.
func (cc *clientConn) queueWait(ctx context.Context, call *Call, bp *[]byte, size int64) error {
	const spins = 16
	var guard *time.Timer
	defer func() {
		if guard != nil {
			guard.Stop()
		}
	}()
	for round := 0; ; round++ {
		var ch chan struct{}
		if round >= spins {
			ch = cc.roomChan() // before looking: room made after this wakes it
		}
		cc.mu.Lock()
		if err := cc.err; err != nil {
			cc.mu.Unlock()
			putBuf(bp)
			return err
		}
		ok := cc.queue(call, bp, size)
		cc.mu.Unlock()
		if ok {
			return nil
		}
		if round < spins {
			if err := ctx.Err(); err != nil {
				putBuf(bp)
				return fmt.Errorf("epollbatch: waiting for room in the connection's ring: %w", err)
			}
			runtime.Gosched()
			continue
		}
		if guard == nil {
			guard = time.NewTimer(time.Millisecond)
		} else {
			guard.Reset(time.Millisecond)
		}
		select {
		case <-ch:
		case <-guard.C:
		case <-cc.dead: // cc.err says why, next round
		case <-ctx.Done():
			putBuf(bp)
			return fmt.Errorf("epollbatch: waiting for room in the connection's ring: %w", ctx.Err())
		}
	}
}

// roomChan returns the channel the next wakeRoom closes.
func (cc *clientConn) roomChan() chan struct{} {
	for {
		if p := cc.room.Load(); p != nil {
			return *p
		}
		ch := make(chan struct{})
		if cc.room.CompareAndSwap(nil, &ch) {
			return ch
		}
	}
}

// tryReserve counts size bytes in the connection's queue if they fit
// under WithMaxQueuedBytes, or if nothing is queued: one request always
// goes, however large.
func (cc *clientConn) tryReserve(size int64) bool {
	limit := int64(cc.cl.opts.maxQueued)
	for {
		q := cc.c.outBytes.Load()
		if q > 0 && q+size > limit {
			return false
		}
		if cc.c.outBytes.CompareAndSwap(q, q+size) {
			return true
		}
	}
}

// release gives back bytes reserved for a frame that was not queued.
func (cc *clientConn) release(size int64) {
	cc.c.outBytes.Add(-size)
	cc.wakeRoom()
}

// reserve is tryReserve waiting for room, as long as ctx allows and the
// connection lives.
func (cc *clientConn) reserve(ctx context.Context, size int64) error {
	for {
		if cc.tryReserve(size) {
			return nil
		}
		ch := make(chan struct{})
		if !cc.room.CompareAndSwap(nil, &ch) {
			if p := cc.room.Load(); p != nil {
				ch = *p
			} else {
				continue
			}
		}
		// Look again once the channel is in place: room made before it
		// was would wake no one.
		if cc.tryReserve(size) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("epollbatch: waiting for room in the send queue (WithMaxQueuedBytes %d): %w", cc.cl.opts.maxQueued, ctx.Err())
		case <-cc.dead:
			cc.mu.Lock()
			err := cc.err
			cc.mu.Unlock()
			return err
		}
	}
}

func (cc *clientConn) wakeRoom() {
	if p := cc.room.Swap(nil); p != nil {
		close(*p)
	}
}

// written: frames left for the server, making room in the queue and the
// ring (reactor goroutine).
func (cc *clientConn) written(_ *conn, _, bytes int64) {
	cc.wrote += bytes
	cc.wakeRoom()
}

// abandon completes the call seq with err, if it still waits for its
// reply: its ctx ended (whether it was sent is not known here: sent, to
// be safe), or its request could not be queued (not sent).
func (cc *clientConn) abandon(seq uint64, err error, sent bool) {
	cc.mu.Lock()
	call := cc.pending[seq]
	delete(cc.pending, seq)
	cc.mu.Unlock()
	if call != nil {
		call.complete(cc.cl.callError(call.ctx, call.ServiceMethod, err, sent))
	}
}

// fail marks the connection dead (any goroutine): no call is queued on it
// any more, callers waiting for room give up, and the reactor closes the
// socket, then completes the pending calls (closed).
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	if cc.cl.ctx.Err() != nil {
		err = ErrShutdown
	}
	cc.err = err
	close(cc.dead)
	if cc.heartbeat != nil {
		cc.heartbeat.Stop()
	}
	cc.mu.Unlock()
	cc.cl.live.Add(-1)
	cc.c.requestClose(err)
}

func (cc *clientConn) attached(*conn) {}

// closed: the reactor closed the connection (the server closed it, an
// error, or fail). Nothing more will be written: every pending call fails,
// with ErrConnLost if its request was written whole, ErrNotSent if not.
func (cc *clientConn) closed(_ *conn, err error) {
	if err == nil {
		err = errors.New("epollbatch: connection closed by the server")
	}
	cc.fail(err)
	cc.mu.Lock()
	err = cc.err
	pending := cc.pending
	cc.pending = nil
	cc.mu.Unlock()
	for _, call := range pending {
		if call.stopWait != nil {
			call.stopWait()
		}
		call.complete(cc.cl.callError(call.ctx, call.ServiceMethod, err, call.sent(cc.wrote)))
	}
}

// frame handles a reply on the reactor's goroutine: it finds the call by
// sequence ID and decodes the reply into it.
func (cc *clientConn) frame(c *conn, _ []byte, f *protocol.Frame) {
	switch f.Type {
	case protocol.TypeReply:
		cc.mu.Lock()
		call := cc.pending[f.Seq]
		delete(cc.pending, f.Seq)
		cc.lastRecv, cc.pingSent = time.Now(), time.Time{}
		cc.mu.Unlock()
		if call != nil {
			call.complete(cc.finish(call, f))
		}
	case protocol.TypePong:
		cc.mu.Lock()
		cc.lastRecv, cc.pingSent = time.Now(), time.Time{}
		cc.mu.Unlock()
	default:
		c.close(fmt.Errorf("epollbatch: unexpected %s frame from the server", f.Type))
	}
}

// finish gives the outcome of a call whose reply f arrived.
func (cc *clientConn) finish(call *Call, f *protocol.Frame) error {
	if call.stopWait != nil && !call.stopWait() {
		return cc.cl.callError(call.ctx, call.ServiceMethod, call.ctx.Err(), true)
	}
	if dl, ok := call.ctx.Deadline(); ok && !time.Now().Before(dl) {
		return fmt.Errorf("epollbatch: call %s: %w", call.ServiceMethod, context.DeadlineExceeded)
	}
	if err := service.DecodeReply(f, call.Reply); err != nil {
		var se ServerError
		if errors.As(err, &se) {
			return se
		}
		return fmt.Errorf("epollbatch: call %s: decoding the reply: %w", call.ServiceMethod, err)
	}
	return nil
}
