package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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

	ctx      context.Context
	stopWait func() bool // stops the watch on ctx
	logger   *slog.Logger
}

// complete delivers the call. Only the goroutine that removed the call from
// its connection's pending map (or that never put it there) calls it, so a
// call completes once.
func (call *Call) complete(err error) {
	call.Error = err
	select {
	case call.Done <- call:
	default:
		call.logger.Debug("pipeline: Go: done channel full; completion dropped", "method", call.ServiceMethod)
	}
}

// Client calls the methods of one server over one long-lived connection (a
// few with WithConns), shared by every call at once. Each request carries a
// sequence ID; the call waits in the connection's pending map until the
// reply with that ID arrives, in whatever order replies come. A Client is
// safe for concurrent use.
type Client struct {
	network, address string
	opts             clientOptions
	next             atomic.Uint64 // round robin over the connections

	// ctx ends when the client is closed; a dial in progress watches it.
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	slots []slot
	stats Stats // Dials; the rest are counted below

	flushes, frames, timeouts atomic.Int64
}

// slot is one of the client's connections, and how to make it again.
type slot struct {
	conn    *conn
	dialing chan struct{} // closed when the dial in progress ends
	lastErr error         // the last dial's error
	retryAt time.Time     // no new dial before this, after a failure
	backoff time.Duration // the pause after the next failure
}

// Redial pauses after failed dials: from minBackoff, doubling, to maxBackoff.
const (
	minBackoff = 10 * time.Millisecond
	maxBackoff = time.Second
)

// Dial connects to the server at address and returns its client. A call made
// after the connection broke connects again.
func Dial(network, address string, opts ...ClientOption) (*Client, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("pipeline: dial %s %s: %w", network, address, net.UnknownNetworkError(network))
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{network: network, address: address, opts: newClientOptions(opts), ctx: ctx, cancel: cancel}
	c.slots = make([]slot, c.opts.conns)
	dctx, dcancel := context.WithTimeout(ctx, c.opts.dialTimeout)
	defer dcancel()
	if _, err := c.conn(dctx, 0); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Call calls serviceMethod ("Service.Method") with args, waits for the reply
// and decodes it into reply. A method's error is returned as a ServerError.
// If ctx ends first, Call returns at once with an error that matches
// ctx.Err() (errors.Is), and reply is left alone.
func (c *Client) Call(ctx context.Context, serviceMethod string, args, reply any) error {
	call := callPool.Get().(*Call)
	call.ServiceMethod, call.Args, call.Reply = serviceMethod, args, reply
	c.start(ctx, call, protocol.TypeRequest, false)
	<-call.Done
	err := call.Error
	*call = Call{Done: call.Done}
	callPool.Put(call)
	return err
}

// callPool holds the Calls of Call, which no one sees once it returns.
// (The Calls of Go belong to the caller and are never pooled.)
var callPool = sync.Pool{New: func() any { return &Call{Done: make(chan *Call, 1)} }}

// Go calls serviceMethod without waiting: the request is queued for the
// connection's writer and Go returns. The Call is sent on done when it
// completes. A nil done makes a new channel (buffered); a done without
// buffer space panics, since the call would block on it.
func (c *Client) Go(ctx context.Context, serviceMethod string, args, reply any, done chan *Call) *Call {
	if done == nil {
		done = make(chan *Call, 10)
	} else if cap(done) == 0 {
		panic("pipeline: Go: done channel is unbuffered")
	}
	call := &Call{ServiceMethod: serviceMethod, Args: args, Reply: reply, Done: done}
	c.start(ctx, call, protocol.TypeRequest, true)
	return call
}

// Notify calls serviceMethod with args one way: the server runs the method
// and sends no reply. Notify returns once the request is queued for the
// connection's writer.
func (c *Client) Notify(ctx context.Context, serviceMethod string, args any) error {
	call := callPool.Get().(*Call)
	call.ServiceMethod, call.Args = serviceMethod, args
	c.start(ctx, call, protocol.TypeOneway, false)
	<-call.Done
	err := call.Error
	*call = Call{Done: call.Done}
	callPool.Put(call)
	return err
}

// Close closes the client and its connections. Later calls return
// ErrShutdown, and calls in flight end at once with ErrShutdown. Close may
// be called more than once.
func (c *Client) Close() error {
	c.cancel()
	c.mu.Lock()
	conns := make([]*conn, 0, len(c.slots))
	for i := range c.slots {
		if c.slots[i].conn != nil {
			conns = append(conns, c.slots[i].conn)
		}
	}
	c.mu.Unlock()
	for _, mc := range conns {
		mc.fail(ErrShutdown)
	}
	return nil
}

// Stats are figures of a client's connections, since it was made.
type Stats struct {
	Conns    int   // connections open now
	Pending  int   // calls waiting for their reply now
	Dials    int64 // connections made
	Flushes  int64 // writes of the writer goroutines
	Frames   int64 // frames they wrote: Frames/Flushes is the batching
	Timeouts int64 // connections declared dead for want of a pong
}

// Stats returns figures of the client's connections.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	for i := range c.slots {
		if mc := c.slots[i].conn; mc != nil && mc.alive() {
			st.Conns++
			st.Pending += mc.pendingLen()
		}
	}
	st.Flushes += c.flushes.Load()
	st.Frames += c.frames.Load()
	st.Timeouts += c.timeouts.Load()
	return st
}

// start sends the call's request, or completes the call with the reason it
// cannot be sent. It never waits on the network.
func (c *Client) start(ctx context.Context, call *Call, typ protocol.Type, async bool) {
	call.ctx = ctx
	call.logger = c.opts.logger
	if c.ctx.Err() != nil {
		call.complete(ErrShutdown)
		return
	}
	if err := ctx.Err(); err != nil {
		call.complete(fmt.Errorf("pipeline: call %s: %w", call.ServiceMethod, err))
		return
	}
	mc, err := c.conn(ctx, int(c.next.Add(1)%uint64(len(c.slots))))
	if err != nil {
		call.complete(c.callError(ctx, call.ServiceMethod, err))
		return
	}
	mc.send(ctx, call, typ, async)
}

// conn returns the live connection of slot i, dialing it if it is broken
// or missing. One dial at a time per slot; after a failed dial, calls fail
// at once with its error until a growing pause has passed.
func (c *Client) conn(ctx context.Context, i int) (*conn, error) {
	for {
		c.mu.Lock()
		s := &c.slots[i]
		if s.conn != nil && s.conn.alive() {
			mc := s.conn
			c.mu.Unlock()
			return mc, nil
		}
		if c.ctx.Err() != nil {
			c.mu.Unlock()
			return nil, ErrShutdown
		}
		if wait := s.dialing; wait != nil { // someone dials: wait for them
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if s.lastErr != nil && time.Now().Before(s.retryAt) {
			err, retryAt := s.lastErr, s.retryAt // read under mu: a dial may end meanwhile
			c.mu.Unlock()
			return nil, fmt.Errorf("%w (next attempt in %v)", err, time.Until(retryAt).Round(time.Millisecond))
		}
		s.dialing = make(chan struct{})
		c.mu.Unlock()

		mc, err := c.dial(ctx)

		c.mu.Lock()
		close(s.dialing)
		s.dialing = nil
		if err != nil {
			s.lastErr = err
			s.backoff = min(max(2*s.backoff, minBackoff), maxBackoff)
			s.retryAt = time.Now().Add(s.backoff)
			c.mu.Unlock()
			return nil, err
		}
		s.lastErr, s.backoff = nil, 0
		s.conn = mc
		c.stats.Dials++
		closed := c.ctx.Err() != nil
		c.mu.Unlock()
		if closed {
			mc.fail(ErrShutdown)
			return nil, ErrShutdown
		}
		return mc, nil
	}
}

// dial makes a new connection and starts its reader and writer.
func (c *Client) dial(ctx context.Context) (*conn, error) {
	// A dial ends with the caller's ctx or with the client.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	d := net.Dialer{Timeout: c.opts.dialTimeout}
	nc, err := d.DialContext(ctx, c.network, c.address)
	if err != nil {
		return nil, err
	}
	return newConn(c, nc), nil
}

// callError says why a call failed: the client was closed, the caller's
// ctx ended, or the connection failed.
func (c *Client) callError(ctx context.Context, serviceMethod string, err error) error {
	var se ServerError
	if errors.As(err, &se) {
		return se
	}
	if c.ctx.Err() != nil || errors.Is(err, ErrShutdown) {
		return ErrShutdown
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("pipeline: call %s: %w", serviceMethod, cerr)
	}
	return fmt.Errorf("pipeline: call %s: %w", serviceMethod, err)
}
