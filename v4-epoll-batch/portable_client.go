package epollbatch

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// The portable engine, client side.

// pclientConn is a client connection of the portable engine (TLS, and
// systems without epoll), carrying any number of calls at once: v3's
// client connection, with v4's options.
//
//	caller goroutines ──send──▶ wbuf ──writer goroutine──▶ socket
//	       │ (seq registered in pending first)                 │
//	       ▼                                                   ▼
//	    pending[seq] ◀──────reader goroutine─────────── replies, any order
//
// Two goroutines per connection: the writer drains wbuf (every frame queued
// since its last write, in one write), the reader matches each reply to its
// call by sequence ID. Whoever removes a call from pending completes it:
// the reader (its reply came), the call's ctx watcher (it ended first), or
// the writer as it stops once the connection broke (drop).
//
// Whether a call's request left (ErrNotSent or ErrConnLost): queued counts
// the bytes appended to wbuf, the stream in the order it is written, and
// each call records where its frame ends (Call.sentEnd); the writer counts
// the bytes its writes took (wrote). Once the writer has stopped nothing
// more is written, and a pending call whose frame ends past wrote was not
// written whole: its server cannot have run it.
type pclientConn struct {
	c   *Client
	nc  net.Conn
	seq atomic.Uint64

	lastRead atomic.Int64 // when bytes last arrived (Unix ns), set by the reader

	mu        sync.Mutex
	pending   map[uint64]*Call
	wbuf      []byte        // frames queued for the writer
	frames    int           // how many
	queued    int64         // bytes appended to wbuf so far
	room      chan struct{} // closed when the writer takes wbuf; nil if no one waits
	err       error         // why the connection is dead; nil while alive
	lastRecv  time.Time     // when a frame last arrived
	pingSent  time.Time     // when the outstanding ping left; zero if none
	heartbeat *time.Timer

	wake chan struct{} // tells the writer there is work; capacity 1
	done chan struct{} // closed when the connection dies

	wrote int64 // (writer goroutine) bytes written so far
}

func newPclientConn(c *Client, nc net.Conn) *pclientConn {
	mc := &pclientConn{
		c:        c,
		nc:       nc,
		pending:  make(map[uint64]*Call),
		lastRecv: time.Now(),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	c.live.Add(1) // its first failure counts it out (fail)
	go mc.readLoop()
	go mc.writeLoop()
	if d := c.opts.pingInterval; d > 0 {
		mc.mu.Lock() // beat reads heartbeat under mu, and may run before AfterFunc returns
		mc.heartbeat = time.AfterFunc(d, mc.beat)
		mc.mu.Unlock()
	}
	return mc
}

func (mc *pclientConn) alive() bool {
	select { // without mc.mu: a receive that cannot wait takes no lock
	case <-mc.done:
		return false
	default:
		return true
	}
}

func (mc *pclientConn) pendingLen() int {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	return len(mc.pending)
}

// send encodes the call's request and queues it (see enqueue). It never
// waits on the network. When the queue is full, Call and Notify wait for
// room as long as their ctx allows, and a Go call (async) waits on a
// goroutine of its own, so that Go never blocks its caller.
func (mc *pclientConn) send(ctx context.Context, call *Call, typ protocol.Type, async bool) {
	seq := mc.seq.Add(1)
	bp := getBuf()
	defer putBuf(bp)
	frame, err := appendRequest(ctx, (*bp)[:0], typ, seq, mc.c.opts.codec, call.ServiceMethod, call.Args)
	*bp = frame
	if err != nil {
		call.complete(fmt.Errorf("epollbatch: call %s: encoding the request: %w", call.ServiceMethod, err))
		return
	}
	if !mc.enqueue(ctx, call, typ, seq, frame, !async) {
		frame = bytes.Clone(frame) // the pooled buffer goes back when send returns
		go mc.enqueue(ctx, call, typ, seq, frame, true)
	}
}

// enqueue registers the call in pending (before its frame can be written,
// so that no reply can come for an unknown call) and appends its frame to
// the writer's queue. When the queue is full it waits for the writer to take
// it if wait is set, and otherwise returns false having done nothing.
func (mc *pclientConn) enqueue(ctx context.Context, call *Call, typ protocol.Type, seq uint64, frame []byte, wait bool) bool {
	mc.mu.Lock()
	for mc.err == nil && len(mc.wbuf) > 0 && len(mc.wbuf)+len(frame) > mc.c.opts.maxQueued {
		if !wait {
			mc.mu.Unlock()
			return false
		}
		if err := mc.waitRoom(ctx); err != nil {
			mc.mu.Unlock()
			call.complete(fmt.Errorf("epollbatch: call %s: %w", call.ServiceMethod, err))
			return true
		}
	}
	if mc.err != nil {
		err := mc.err
		mc.mu.Unlock()
		call.complete(mc.c.callError(ctx, call.ServiceMethod, err, false))
		return true
	}
	if typ == protocol.TypeRequest {
		mc.pending[seq] = call
		if ctx.Done() != nil {
			// The watch holds the sequence ID, not the call: once the call
			// is out of pending, a late watch finds nothing to do. It is
			// set under mu, before any reply can look for it.
			call.stopWait = context.AfterFunc(ctx, func() { mc.abandon(seq, ctx.Err()) })
		}
	}
	mc.wbuf = append(mc.wbuf, frame...)
	mc.frames++
	mc.queued += int64(len(frame))
	call.sentEnd = mc.queued
	mc.mu.Unlock()
	select {
	case mc.wake <- struct{}{}:
	default: // the writer is already told
	}
	if typ == protocol.TypeOneway {
		call.complete(nil) // queued: a one-way call is done
	}
	return true
}

// waitRoom waits, with mc.mu held (and released while waiting), until the
// writer takes the queue, the connection dies, or ctx ends.
func (mc *pclientConn) waitRoom(ctx context.Context) error {
	if mc.room == nil {
		mc.room = make(chan struct{})
	}
	room := mc.room
	mc.mu.Unlock()
	var err error
	select {
	case <-room:
	case <-mc.done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	mc.mu.Lock()
	return err
}

// abandon completes the call seq with err, if it still waits for its reply:
// its ctx ended. A reply that comes later finds no call and is dropped.
func (mc *pclientConn) abandon(seq uint64, err error) {
	mc.mu.Lock()
	call := mc.pending[seq]
	delete(mc.pending, seq)
	mc.mu.Unlock()
	if call != nil {
		call.complete(fmt.Errorf("epollbatch: call %s: %w", call.ServiceMethod, err))
	}
}

// writeLoop writes the queued frames: everything queued since the last
// write goes out in one write, so that under load frames batch.
func (mc *pclientConn) writeLoop() {
	defer mc.drop()
	var spare []byte
	for {
		select {
		case <-mc.wake:
		case <-mc.done:
			return
		}
		runtime.Gosched() // let the senders that are ready queue their frames too
		mc.mu.Lock()
		if len(mc.wbuf) == 0 { // nothing queued: keep the buffer, do not swap
			mc.mu.Unlock()
			continue
		}
		buf, frames := mc.wbuf, mc.frames
		// Swap in the spare buffer: senders fill it while buf is written.
		// (spare is never wbuf: only buffers taken out here become spare.)
		mc.wbuf, mc.frames = spare[:0], 0
		if mc.room != nil {
			close(mc.room) // the queue is empty: waiting senders go on
			mc.room = nil
		}
		mc.mu.Unlock()
		n, err := mc.nc.Write(buf)
		mc.wrote += int64(n)
		if err != nil {
			mc.fail(err)
			return
		}
		mc.c.writes.Add(1)
		mc.c.frames.Add(int64(frames))
		if cap(buf) <= mc.c.opts.maxQueued {
			spare = buf // bounded by the queue's limit
		} else {
			spare = nil // a single frame larger than the limit: do not keep its buffer
		}
	}
}

// readLoop reads replies and completes their calls, until the connection
// fails.
func (mc *pclientConn) readLoop() {
	br := bufio.NewReaderSize(readRecorder{mc}, min(mc.c.opts.bufSize, portableReadBuf))
	var rbuf []byte
	var f protocol.Frame
	for {
		var err error
		if rbuf, err = protocol.ReadFrame(br, mc.c.opts.maxFrameSize, &f, rbuf); err != nil {
			mc.fail(err)
			return
		}
		mc.mu.Lock()
		mc.lastRecv = time.Now()
		mc.pingSent = time.Time{}
		var call *Call
		switch f.Type {
		case protocol.TypeReply:
			call = mc.pending[f.Seq]
			delete(mc.pending, f.Seq)
		case protocol.TypePong:
		default:
			mc.mu.Unlock()
			mc.fail(fmt.Errorf("unexpected %s frame from the server", f.Type))
			return
		}
		mc.mu.Unlock()
		if call != nil {
			call.complete(mc.finish(call, &f))
		}
		if cap(rbuf) > maxPooledBuf {
			rbuf = nil // do not keep a large reply's buffer for the connection's life
		}
	}
}

// finish gives the outcome of a call whose reply f arrived.
func (mc *pclientConn) finish(call *Call, f *protocol.Frame) error {
	if call.stopWait != nil && !call.stopWait() {
		// The ctx ended as the reply arrived; abandon found the call gone.
		return mc.c.callError(call.ctx, call.ServiceMethod, call.ctx.Err(), true)
	}
	if dl, ok := call.ctx.Deadline(); ok && !time.Now().Before(dl) {
		// Read at or after the deadline, before ctx's own timer fired.
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

// fail kills the connection (any goroutine): nothing more is queued on it,
// the socket is closed, which stops the writer, and the writer then fails
// every pending call with err (or ErrShutdown, if the client is closed):
// see drop. The next call connects again.
func (mc *pclientConn) fail(err error) {
	mc.mu.Lock()
	if mc.err != nil {
		mc.mu.Unlock()
		return
	}
	if mc.c.ctx.Err() != nil {
		err = ErrShutdown
	}
	mc.err = err
	close(mc.done)
	if mc.heartbeat != nil {
		mc.heartbeat.Stop()
	}
	mc.mu.Unlock()
	mc.c.live.Add(-1)
	mc.nc.Close()
}

// drop fails every pending call once the writer has stopped (the
// connection failed, so it stops), when nothing more can be written: with
// ErrConnLost if its request was written whole, ErrNotSent if not.
func (mc *pclientConn) drop() {
	mc.mu.Lock()
	err := mc.err
	pending := mc.pending
	mc.pending = nil
	mc.mu.Unlock()
	for _, call := range pending {
		if call.stopWait != nil {
			call.stopWait()
		}
		call.complete(mc.c.callError(call.ctx, call.ServiceMethod, err, call.sent(mc.wrote)))
	}
}

// beat runs every ping interval: it pings a connection that has been
// silent for an interval, and declares it dead when a ping has gone
// unanswered for two more.
func (mc *pclientConn) beat() {
	d := mc.c.opts.pingInterval
	mc.mu.Lock()
	if mc.err != nil {
		mc.mu.Unlock()
		return
	}
	now := time.Now()
	mc.lastRecv, mc.pingSent = alive(mc.lastRecv, mc.pingSent, mc.lastRead.Load())
	if !mc.pingSent.IsZero() && now.Sub(mc.pingSent) >= 2*d {
		mc.mu.Unlock()
		mc.fail(errNoPong)
		return
	}
	if mc.pingSent.IsZero() && now.Sub(mc.lastRecv) >= d {
		mc.pingSent = now
		h := protocol.Header{Type: protocol.TypePing, Seq: mc.seq.Add(1)}
		before := len(mc.wbuf)
		mc.wbuf, _ = protocol.AppendFrame(mc.wbuf, &h, "", "", nil)
		mc.queued += int64(len(mc.wbuf) - before) // in the stream, as a request's frame
		mc.frames++
		select {
		case mc.wake <- struct{}{}:
		default:
		}
	}
	mc.heartbeat.Reset(d)
	mc.mu.Unlock()
}

// readRecorder reads the connection for the reader's bufio.Reader, and
// records when bytes arrive: part of a large reply is a sign of life too.
type readRecorder struct{ mc *pclientConn }

func (r readRecorder) Read(p []byte) (int, error) {
	n, err := r.mc.nc.Read(p)
	if n > 0 {
		r.mc.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}
