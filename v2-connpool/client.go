package connpool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// ErrShutdown is returned by the calls of a closed Client.
var ErrShutdown = service.ErrShutdown

// Call is a call in progress or completed, as returned by Go.
type Call struct {
	ServiceMethod string     // the name of the method called
	Args          any        // the arguments
	Reply         any        // the reply, valid once Error is nil
	Error         error      // the outcome, once the call is complete
	Done          chan *Call // receives the Call when it completes
}

// Client calls the methods of one server over a pool of long-lived
// connections. A call borrows one connection for its whole round trip (one
// request at a time per connection) and gives it back. A Client is safe for
// concurrent use.
type Client struct {
	opts clientOptions
	seq  atomic.Uint64
	pool *pool

	// ctx ends when the client is closed; a dial in progress watches it.
	ctx    context.Context
	cancel context.CancelFunc
}

// bufPool holds the buffers requests are encoded into. A buffer lives for
// one call: taken before encoding, given back once written.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledBuf is the largest buffer given back to bufPool; a larger one
// (from a large request) is left to the GC instead of being kept.
const maxPooledBuf = 64 << 10

// Dial returns a client of the server at address. Connections are made as
// calls need them, so Dial only checks the network: it fails at once on an
// unknown one.
func Dial(network, address string, opts ...ClientOption) (*Client, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("connpool: dial %s %s: %w", network, address, net.UnknownNetworkError(network))
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{opts: newClientOptions(opts), ctx: ctx, cancel: cancel}
	d := net.Dialer{Timeout: c.opts.dialTimeout}
	c.pool = newPool(func(ctx context.Context) (net.Conn, error) {
		// A dial ends with the caller's ctx or with the client.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(c.ctx, cancel)
		defer stop()
		return d.DialContext(ctx, network, address)
	}, &c.opts)
	return c, nil
}

// Stats returns figures of the client's connection pool.
func (c *Client) Stats() Stats { return c.pool.statsNow() }

// Call calls serviceMethod ("Service.Method") with args, waits for the reply
// and decodes it into reply. A method's error is returned as a ServerError.
// If ctx ends first, Call returns at once with an error that matches
// ctx.Err() (errors.Is), and reply is left alone.
func (c *Client) Call(ctx context.Context, serviceMethod string, args, reply any) error {
	return c.roundTrip(ctx, protocol.TypeRequest, serviceMethod, args, reply)
}

// Go calls serviceMethod without waiting for it: the returned Call is sent
// on done when it completes. A nil done makes a new channel (buffered); a
// done without buffer space panics, since the call would block on it.
func (c *Client) Go(ctx context.Context, serviceMethod string, args, reply any, done chan *Call) *Call {
	if done == nil {
		done = make(chan *Call, 10)
	} else if cap(done) == 0 {
		panic("connpool: Go: done channel is unbuffered")
	}
	call := &Call{ServiceMethod: serviceMethod, Args: args, Reply: reply, Done: done}
	// v1's calls are synchronous: Go runs one on a goroutine of its own.
	go func() {
		call.Error = c.roundTrip(ctx, protocol.TypeRequest, serviceMethod, args, reply)
		select {
		case call.Done <- call:
		default:
			c.opts.logger.Debug("connpool: Go: done channel full; completion dropped", "method", serviceMethod)
		}
	}()
	return call
}

// Notify calls serviceMethod with args one way: the server runs the method
// and sends no reply, and Notify returns once the request is written.
func (c *Client) Notify(ctx context.Context, serviceMethod string, args any) error {
	return c.roundTrip(ctx, protocol.TypeOneway, serviceMethod, args, nil)
}

// Close closes the client and its connections. Later calls return
// ErrShutdown, and calls in flight end at once with ErrShutdown. Close may
// be called more than once.
func (c *Client) Close() error {
	c.cancel()
	c.pool.close()
	return nil
}

// errNotSent marks a failure before any byte of the request left: the call
// can be retried without running twice on the server.
var errNotSent = errors.New("request not sent")

// roundTrip is the life of a v2 call: encode into a pooled buffer, borrow a
// connection, write, read, give the connection back.
func (c *Client) roundTrip(ctx context.Context, typ protocol.Type, serviceMethod string, args, reply any) (err error) {
	if c.ctx.Err() != nil {
		return ErrShutdown
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("connpool: call %s: %w", serviceMethod, err)
	}
	seq := c.seq.Add(1)
	bp := bufPool.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= maxPooledBuf {
			bufPool.Put(bp)
		}
	}()
	req, err := service.AppendRequest(ctx, (*bp)[:0], typ, seq, c.opts.codec, serviceMethod, args)
	*bp = req
	if err != nil {
		return fmt.Errorf("connpool: call %s: encoding the request: %w", serviceMethod, err)
	}
	defer func() {
		if err != nil {
			err = c.callError(ctx, serviceMethod, err)
		}
	}()

	fresh := false
	for {
		pc, err := c.pool.get(ctx, fresh)
		if err != nil {
			return err
		}
		reusable, err := c.exchange(ctx, pc, req, typ, seq, reply)
		c.pool.put(pc, reusable)
		// A connection found dead before anything was written: the server
		// cannot have seen this request. Retry once, on a new connection.
		if errors.Is(err, errNotSent) && pc.reused && !fresh && c.ctx.Err() == nil && ctx.Err() == nil {
			c.opts.logger.Debug("connpool: pooled connection was dead; retrying on a new one", "method", serviceMethod, "err", err)
			fresh = true
			continue
		}
		return err
	}
}

// exchange writes req on pc and reads the reply into reply. It reports
// whether pc can carry another call: not after an I/O error, a protocol
// error, or a call abandoned by its ctx (its reply may still come).
func (c *Client) exchange(ctx context.Context, pc *pconn, req []byte, typ protocol.Type, seq uint64, reply any) (reusable bool, err error) {
	if pc.reused {
		if err := pc.check.run(); err != nil {
			return false, fmt.Errorf("%w: %w", errNotSent, err)
		}
		if pc.br.Buffered() > 0 {
			return false, fmt.Errorf("%w: %w", errNotSent, errUnexpectedBuffered)
		}
	}
	if dl, ok := ctx.Deadline(); ok {
		pc.SetDeadline(dl)
		pc.deadline = true
	} else if pc.deadline {
		pc.SetDeadline(time.Time{})
		pc.deadline = false
	}
	// A ctx that ends unblocks the reads and writes below at once; the
	// connection is then given up, since its reply may still come.
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { pc.SetDeadline(time.Unix(1, 0)) })
		defer func() {
			if stop != nil && !stop() {
				reusable, err = false, ctx.Err()
			}
		}()
	}

	if _, err := pc.bw.Write(req); err != nil {
		return false, err
	}
	if err := pc.bw.Flush(); err != nil {
		if pc.bw.Buffered() == len(req) {
			err = fmt.Errorf("%w: %w", errNotSent, err)
		}
		return false, err
	}
	if typ == protocol.TypeOneway {
		return true, nil
	}
	var f protocol.Frame
	if pc.rbuf, err = protocol.ReadFrame(pc.br, c.opts.maxFrameSize, &f, pc.rbuf); err != nil {
		return false, err
	}
	if cap(pc.rbuf) > maxPooledBuf {
		defer func() { pc.rbuf = nil }() // do not keep a large reply's buffer for the connection's life
	}
	if f.Type != protocol.TypeReply || f.Seq != seq {
		return false, fmt.Errorf("unexpected %s frame with seq %d (want the reply to %d)", f.Type, f.Seq, seq)
	}
	if stop != nil {
		ended := !stop()
		stop = nil
		if ended { // the ctx ended as the reply arrived: it is late
			return false, ctx.Err()
		}
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		// Read at or after the deadline, before ctx's own timer fired
		// (the server's timer, started from the same deadline, can win).
		return true, context.DeadlineExceeded
	}
	// The exchange is complete: whatever the reply says, pc is reusable.
	return true, service.DecodeReply(&f, reply)
}

// errUnexpectedBuffered: bytes left in an idle connection's reader.
var errUnexpectedBuffered = errors.New("connpool: unread bytes on an idle connection")

// callError says why a call failed: the client was closed, the caller's
// ctx ended, or the connection failed.
func (c *Client) callError(ctx context.Context, serviceMethod string, err error) error {
	var se ServerError
	if errors.As(err, &se) {
		return se
	}
	if c.ctx.Err() != nil || errors.Is(err, errPoolClosed) {
		return ErrShutdown
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("connpool: call %s: %w", serviceMethod, cerr)
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		// The connection's deadline, which is ctx's, fired before ctx's timer.
		return fmt.Errorf("connpool: call %s: %w", serviceMethod, context.DeadlineExceeded)
	}
	return fmt.Errorf("connpool: call %s: %w", serviceMethod, err)
}
