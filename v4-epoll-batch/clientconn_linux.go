package epollbatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// clientConn is the client's side of one connection: the pending map, as
// in v3, with the reactor's conn underneath instead of a reader and a
// writer goroutine.
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
	lastRecv  time.Time   // when a frame last arrived
	born      time.Time   // when the heartbeat started
	pingSent  time.Time   // when the outstanding ping left; zero if none
	heartbeat *time.Timer // a timer, not a goroutine, per connection
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
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err == nil
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
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		putBuf(bp)
		call.complete(cc.cl.callError(ctx, call.ServiceMethod, err))
		return
	}
	if typ == protocol.TypeRequest {
		cc.pending[seq] = call
		if ctx.Done() != nil {
			// The watch holds the sequence ID, not the call (see v3).
			call.stopWait = context.AfterFunc(ctx, func() { cc.abandon(seq, ctx.Err()) })
		}
	}
	cc.mu.Unlock()

	size := int64(len(*bp))
	if cc.tryReserve(size) {
		if cc.c.trySend(bp) {
			if typ == protocol.TypeOneway {
				call.complete(nil)
			}
			return
		}
		cc.release(size)
	}
	put := func() {
		err := cc.reserve(ctx, size)
		if err == nil {
			if err = cc.c.send(ctx, bp); err != nil {
				cc.release(size)
			}
		} else {
			putBuf(bp)
		}
		if err != nil {
			if typ == protocol.TypeOneway {
				call.complete(cc.cl.callError(ctx, call.ServiceMethod, err))
				return
			}
			cc.abandon(seq, err)
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

// written: frames left for the server, making room in the queue.
func (cc *clientConn) written(_ *conn, _, _ int64) { cc.wakeRoom() }

// abandon completes the call seq with err, if it still waits for its reply.
func (cc *clientConn) abandon(seq uint64, err error) {
	cc.mu.Lock()
	call := cc.pending[seq]
	delete(cc.pending, seq)
	cc.mu.Unlock()
	if call != nil {
		call.complete(cc.cl.callError(call.ctx, call.ServiceMethod, err))
	}
}

// fail marks the connection dead and fails every pending call at once
// (any goroutine); the reactor closes the socket.
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
	pending := cc.pending
	cc.pending = nil
	if cc.heartbeat != nil {
		cc.heartbeat.Stop()
	}
	cc.mu.Unlock()
	cc.c.requestClose(err)
	for _, call := range pending {
		if call.stopWait != nil {
			call.stopWait()
		}
		call.complete(cc.cl.callError(call.ctx, call.ServiceMethod, err))
	}
}

func (cc *clientConn) attached(*conn) {}

// closed: the reactor closed the connection (the server closed it, an
// error, or the client's Close).
func (cc *clientConn) closed(_ *conn, err error) {
	if err == nil {
		err = errors.New("epollbatch: connection closed by the server")
	}
	cc.fail(err)
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
		return cc.cl.callError(call.ctx, call.ServiceMethod, call.ctx.Err())
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
