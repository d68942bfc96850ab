package benchcmp

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
)

// Raw is no RPC at all: a length-prefixed echo on Go's net with bufio. It
// is the transport's limit for the echo workload, the row the RPC
// implementations are measured against in the cross-process grid
// (benchcmp/cross); it is in neither Impls nor Extras, and only Lookup
// finds it, so loadgen -impl raw runs it too.
//
// What "the limit" means here is the least work that any client sharing
// one connection among its callers must do, which is how every
// implementation in the grid is driven (one shared client):
//
//   - a frame is a 4-byte big-endian length and the payload; there is no
//     header, no call id, no method, no codec;
//   - the client's callers share one connection and pipeline on it. A
//     caller appends its frame to the pending bytes; if no write is in
//     progress it writes them, and whatever other callers append during
//     that write goes out in the next one (so writes batch under load, as
//     v3's and v4's do, without a writer goroutine);
//   - the server answers each connection's frames in order from one
//     goroutine, flushing when no more requests are buffered, so the
//     client matches replies to callers by order (a queue) instead of by
//     id. The callers take turns reading (rawClient): one caller alone
//     writes and reads itself, with no hand-off, and under load each
//     reply costs one wake-up of its caller, the one hand-off a shared
//     client cannot avoid.
//
// A connection per caller would not be that limit: with 1,024 callers it
// is 1,024 connections, no batching and a system call per frame on each
// side, which v3 and v4 beat. A connection shared under a lock, one call at
// a time, would be slower still. Raw serves Echo.Echo only: with the 1 ms
// method the limit is not the transport but how many calls can be in the
// server at once (callers / 1 ms), and a server that runs them at once
// and answers in order is the RPC machinery under test.
//
// Raw does not watch ctx: a call waits for its reply (the benchmark's calls
// have no deadline). Close fails the calls in flight.
func Raw() Impl {
	return Impl{
		Name:     "raw",
		EchoOnly: true,
		Serve: func(ln net.Listener) (func(), error) {
			return serveConns(ln, serveRaw), nil
		},
		Dial: func(addr string) (Client, error) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return nil, err
			}
			return newRawClient(c), nil
		},
	}
}

// rawMaxFrame bounds a frame's payload: 64 MiB, as loadgen's -size.
const rawMaxFrame = 64 << 20

// rawBufSize is the size of the bufio buffers on both sides.
const rawBufSize = 64 << 10

// serveRaw echoes the frames of one connection in order until it fails.
func serveRaw(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, rawBufSize)
	w := bufio.NewWriterSize(c, rawBufSize)
	var hdr [4]byte
	buf := make([]byte, 0, 4096)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > rawMaxFrame {
			return
		}
		buf = slices.Grow(buf[:0], int(n))[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return
		}
		if _, err := w.Write(hdr[:]); err != nil {
			return
		}
		if _, err := w.Write(buf); err != nil {
			return
		}
		// Flush when no further request is buffered: under load the
		// replies to all the requests of one read go out in one write.
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// errRawClosed is what calls get after Close.
var errRawClosed = errors.New("raw: client closed")

// rawCall is one caller's call.
type rawCall struct {
	reply *[]byte
	// wake tells the caller that its reply is in (or its error), or that
	// it is now the reader. Two slots: a caller told to read can also be
	// failed before it runs, and no sender ever waits.
	wake   chan rawWake
	popped bool // its reply is being read: under rawClient.mu
}

type rawWake struct {
	lead bool
	err  error
}

var rawCallPool = sync.Pool{New: func() any { return &rawCall{wake: make(chan rawWake, 2)} }}

// rawClient is Raw's client: one connection shared by all callers, with
// no goroutine of its own. The callers take turns at the two ends of the
// connection. Writing: a caller that finds no write in progress writes
// out every frame pending, its own and those appended meanwhile. Reading:
// one caller at a time, the reader, reads replies and hands each to its
// caller; once its own is in it returns, and passes the reading on to
// another waiting caller. One caller alone thus writes and reads itself,
// with no hand-off, and many callers cost one wake-up a call, as with a
// reader goroutine.
//
// The writer is never the reader: if it were, a long write could wait for
// the server to read, and the server for its replies to be read. While a
// write is in progress, every other call in flight waits, and one of
// them reads.
type rawClient struct {
	conn net.Conn
	r    *bufio.Reader // the reader's

	mu      sync.Mutex
	out     []byte     // frames not yet written
	spare   []byte     // the other buffer, written last time
	writer  *rawCall   // the call writing out, or nil
	reading bool       // a call is the reader
	queue   []*rawCall // calls whose replies are not yet read, in the order of their frames
	err     error      // set once: every later call fails with it
}

func newRawClient(conn net.Conn) *rawClient {
	return &rawClient{conn: conn, r: bufio.NewReaderSize(conn, rawBufSize)}
}

// Call sends args (a []byte) and waits for the echo in *reply (a *[]byte).
func (c *rawClient) Call(_ context.Context, method string, args, reply any) error {
	if method != "Echo.Echo" {
		return fmt.Errorf("raw: no method %q: raw is an echo (Echo.Echo) only", method)
	}
	p, ok1 := args.([]byte)
	rp, ok2 := reply.(*[]byte)
	if !ok1 || !ok2 {
		return fmt.Errorf("raw: args must be []byte and reply *[]byte, not %T and %T", args, reply)
	}
	if len(p) > rawMaxFrame {
		return fmt.Errorf("raw: payload of %d bytes: at most %d", len(p), rawMaxFrame)
	}
	call := rawCallPool.Get().(*rawCall)
	call.reply, call.popped = rp, false
	err := c.call(call, p)
	call.reply = nil
	rawCallPool.Put(call)
	return err
}

func (c *rawClient) call(call *rawCall, p []byte) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.out = binary.BigEndian.AppendUint32(c.out, uint32(len(p)))
	c.out = append(c.out, p...)
	c.queue = append(c.queue, call)
	if c.writer == nil {
		c.writer = call
		for len(c.out) > 0 && c.err == nil {
			buf := c.out
			c.out = c.spare[:0]
			c.mu.Unlock()
			_, err := c.conn.Write(buf)
			c.mu.Lock()
			c.spare = buf
			if err != nil {
				c.failLocked(err)
			}
		}
		c.writer = nil
	}
	lead := c.err == nil && !call.popped && !c.reading
	if lead {
		c.reading = true
	}
	c.mu.Unlock()

	for !lead {
		w := <-call.wake
		if !w.lead {
			return w.err
		}
		lead = true
	}
	return c.read(call)
}

// read is the reader's loop: it reads replies and hands each to its call
// until the reply to me is in, then passes the reading on.
func (c *rawClient) read(me *rawCall) error {
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			c.fail(err)
			return (<-me.wake).err // me was in the queue: fail told it
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if n > rawMaxFrame {
			c.fail(fmt.Errorf("raw: a reply of %d bytes: at most %d", n, rawMaxFrame))
			return (<-me.wake).err
		}
		c.mu.Lock()
		if len(c.queue) == 0 { // failed meanwhile (Close): fail told me
			c.mu.Unlock()
			return (<-me.wake).err
		}
		h := c.queue[0] // me is in the queue until its reply is read
		h.popped = true
		c.queue[0] = nil
		c.queue = c.queue[1:]
		c.mu.Unlock()
		*h.reply = slices.Grow((*h.reply)[:0], int(n))[:n]
		_, err := io.ReadFull(c.r, *h.reply)
		if err != nil {
			err = c.fail(err) // Close may have come first: its error, not the read's
		}
		if h != me {
			h.wake <- rawWake{err: err}
			if err != nil {
				return (<-me.wake).err
			}
			continue
		}
		if err == nil {
			c.mu.Lock()
			c.passReadingLocked()
			c.mu.Unlock()
		}
		return err
	}
}

// passReadingLocked ends the reader's turn: the first waiting call that is
// not writing reads next. With none, the next call to come reads.
func (c *rawClient) passReadingLocked() {
	c.reading = false
	if c.err != nil {
		return
	}
	for _, w := range c.queue {
		if w != c.writer {
			c.reading = true
			w.wake <- rawWake{lead: true}
			return
		}
	}
}

// fail ends the client: the connection is closed, and every waiting call
// and every later one gets err, unless the client had already failed. It
// returns the client's error: err, or the earlier one.
func (c *rawClient) fail(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(err)
	return c.err
}

func (c *rawClient) failLocked(err error) {
	if c.err == nil {
		c.err = err
		c.conn.Close()
	}
	for _, call := range c.queue {
		call.wake <- rawWake{err: c.err}
	}
	c.queue = nil
}

// Close closes the connection; calls in flight fail.
func (c *rawClient) Close() error {
	_ = c.fail(errRawClosed)
	return nil
}
