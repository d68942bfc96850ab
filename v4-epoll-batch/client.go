package epollbatch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Client calls the methods of one server over one long-lived connection (a
// few with WithConns), shared by every call at once, as in v3: sequence IDs
// and a pending map. On Linux a plain TCP or Unix connection is driven by
// epoll reactors that every client shares: reads in the reactor, requests
// through the connection's ring to writev, no goroutine per connection. A
// TLS connection (WithTLSConfig), and every connection on systems without
// epoll, is driven by the portable engine: a reader and a writer goroutine.
// A Client is safe for concurrent use.
type Client struct {
	network, address string
	opts             clientOptions
	next             atomic.Uint64 // round robin over the connections

	// ctx ends when the client is closed; a dial in progress watches it.
	ctx    context.Context
	cancel context.CancelFunc

	reactor clientReactors // the epoll engine's loops (client_linux.go); empty elsewhere

	// The portable engine's figures.
	writes, frames atomic.Int64

	live atomic.Int32 // connections made and not yet failed (Connected)

	mu    sync.Mutex
	slots []slot
	dials int64
}

// errNoPong: a connection silent for too long, even to a ping.
var errNoPong = errors.New("epollbatch: connection silent: no reply to ping")

// errNotReading: a connection whose server took nothing of what was
// queued for it for three ping intervals.
var errNotReading = errors.New("epollbatch: connection dead: the server has read nothing for three ping intervals")

// alive folds the time bytes last arrived (lastRead, Unix ns; 0 for
// never) into a connection's heartbeat: bytes count as a sign of life,
// not only whole frames, so a large reply still arriving is not silence,
// and bytes after the outstanding ping answer it as a pong would.
func alive(lastRecv, pingSent time.Time, lastRead int64) (time.Time, time.Time) {
	if lastRead == 0 {
		return lastRecv, pingSent
	}
	if t := time.Unix(0, lastRead); t.After(lastRecv) {
		lastRecv = t
	}
	if !pingSent.IsZero() && lastRecv.After(pingSent) {
		pingSent = time.Time{}
	}
	return lastRecv, pingSent
}

// callConn is one connection of a client, whichever engine drives it.
type callConn interface {
	// send encodes and queues the call's request; it completes the call
	// itself when that fails. It never blocks when async is set.
	send(ctx context.Context, call *Call, typ protocol.Type, async bool)
	alive() bool
	pendingLen() int
	// fail marks the connection dead and fails every pending call.
	fail(err error)
}

// slot is one of the client's connections, and how to make it again.
type slot struct {
	// ready is conn once dialed, read without Client.mu by calls that
	// find it alive.
	ready   atomic.Pointer[readyConn]
	conn    callConn
	dialing chan struct{} // closed when the dial in progress ends
	lastErr error         // the last dial's error
	retryAt time.Time     // no new dial before this, after a failure
	backoff time.Duration // the pause after the next failure
}

// readyConn holds a slot's connection for atomic.Pointer.
type readyConn struct{ conn callConn }

// Redial pauses after failed dials: from minBackoff, doubling, to maxBackoff.
const (
	minBackoff = 10 * time.Millisecond
	maxBackoff = time.Second
)

// Dial connects to the server at address and returns its client. A call made
// after the connection broke connects again.
func Dial(network, address string, opts ...ClientOption) (*Client, error) {
	return DialContext(context.Background(), network, address, opts...)
}

// DialContext is Dial that gives up when ctx ends, with an error that
// matches ctx.Err() (errors.Is). ctx bounds the first connection (its
// dial and TLS handshake) only, along with WithDialTimeout; the client
// outlives it.
func DialContext(ctx context.Context, network, address string, opts ...ClientOption) (*Client, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("epollbatch: dial %s %s: %w", network, address, net.UnknownNetworkError(network))
	}
	o := newClientOptions(opts)
	cctx, cancel := context.WithCancel(context.Background())
	c := &Client{network: network, address: address, opts: o, ctx: cctx, cancel: cancel}
	c.slots = make([]slot, c.opts.conns)
	dctx, dcancel := context.WithTimeout(ctx, c.opts.dialTimeout) // dial stops with the client too
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
// ctx.Err() (errors.Is), and reply is left alone. Metadata on ctx
// (NewOutgoingContext) travels with the request.
//
// A call the connection failed says whether the server may have run it:
// its error wraps ErrNotSent when the request never reached the server
// (the dial failed, or the connection failed before the request was
// written), so that sending it again is safe, and ErrConnLost when the
// request was written and the connection then failed, so that the method
// may have run. Go's and Notify's errors say the same.
func (c *Client) Call(ctx context.Context, serviceMethod string, args, reply any) error {
	if c.opts.intercept != nil {
		return c.intercept(ctx, serviceMethod, args, reply, func(ctx context.Context) error {
			return c.call(ctx, serviceMethod, args, reply, protocol.TypeRequest)
		})
	}
	return c.call(ctx, serviceMethod, args, reply, protocol.TypeRequest)
}

// call makes one call and waits for its outcome, past the interceptors.
func (c *Client) call(ctx context.Context, serviceMethod string, args, reply any, typ protocol.Type) error {
	call := callPool.Get().(*Call)
	call.ServiceMethod, call.Args, call.Reply = serviceMethod, args, reply
	c.start(ctx, call, typ, false)
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
		panic("epollbatch: Go: done channel is unbuffered")
	}
	call := &Call{ServiceMethod: serviceMethod, Args: args, Reply: reply, Done: done}
	if c.opts.intercept != nil { // the interceptors may wait: on a goroutine of the call's own
		call.logger = c.opts.logger
		go func() {
			call.complete(c.intercept(ctx, serviceMethod, args, reply, func(ctx context.Context) error {
				return c.call(ctx, serviceMethod, args, reply, protocol.TypeRequest)
			}))
		}()
		return call
	}
	c.start(ctx, call, protocol.TypeRequest, true)
	return call
}

// Notify calls serviceMethod with args one way: the server runs the method
// and sends no reply. Notify returns once the request is queued for the
// connection's writer.
func (c *Client) Notify(ctx context.Context, serviceMethod string, args any) error {
	if c.opts.intercept != nil {
		return c.intercept(ctx, serviceMethod, args, nil, func(ctx context.Context) error {
			return c.call(ctx, serviceMethod, args, nil, protocol.TypeOneway)
		})
	}
	return c.call(ctx, serviceMethod, args, nil, protocol.TypeOneway)
}

// Close closes the client, its connections and its reactors. Later calls
// return ErrShutdown, and calls in flight end at once with ErrShutdown.
// The error wraps ErrNotSent as well for a call whose request had not
// been written, ErrConnLost for one whose request had. Close may be
// called more than once.
func (c *Client) Close() error {
	c.cancel()
	c.mu.Lock()
	conns := make([]callConn, 0, len(c.slots))
	for i := range c.slots {
		if c.slots[i].conn != nil {
			conns = append(conns, c.slots[i].conn)
		}
	}
	c.mu.Unlock()
	for _, cc := range conns {
		cc.fail(ErrShutdown)
	}
	c.releaseReactors()
	return nil
}

// Connected reports whether one of the client's connections at least is
// open and has not been found dead (by a failed read or write, the server
// closing it, or pings gone unanswered). While it is false a call connects
// first, and fails with ErrNotSent if it cannot. A caller with other
// servers to choose from (package cluster) sends elsewhere instead of
// waiting for the connection. It costs an atomic load.
func (c *Client) Connected() bool { return c.live.Load() > 0 }

// Stats returns figures of the client's connections.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	st := Stats{Dials: c.dials}
	for i := range c.slots {
		if cc := c.slots[i].conn; cc != nil && cc.alive() {
			st.Conns++
			st.Pending += cc.pendingLen()
		}
	}
	c.mu.Unlock()
	c.reactorStats(&st) // with shared reactors: every client's writes
	st.Writes += c.writes.Load()
	st.Frames += c.frames.Load()
	return st
}

// start sends the call's request, or completes the call with the reason it
// cannot be sent. It never waits on the network.
func (c *Client) start(ctx context.Context, call *Call, typ protocol.Type, async bool) {
	call.ctx = ctx
	call.logger = c.opts.logger
	if c.ctx.Err() != nil {
		call.complete(errShutdownNotSent)
		return
	}
	if err := ctx.Err(); err != nil {
		call.complete(fmt.Errorf("epollbatch: call %s: %w", call.ServiceMethod, err))
		return
	}
	mc, err := c.conn(ctx, int(c.next.Add(1)%uint64(len(c.slots))))
	if err != nil {
		call.complete(c.callError(ctx, call.ServiceMethod, err, false))
		return
	}
	mc.send(ctx, call, typ, async)
}

// conn returns the live connection of slot i, dialing it if it is broken
// or missing. One dial at a time per slot; after a failed dial, calls fail
// at once with its error until a growing pause has passed.
func (c *Client) conn(ctx context.Context, i int) (callConn, error) {
	if r := c.slots[i].ready.Load(); r != nil && r.conn.alive() {
		return r.conn, nil
	}
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
			err := s.lastErr
			c.mu.Unlock()
			return nil, fmt.Errorf("%w (next attempt in %v)", err, time.Until(s.retryAt).Round(time.Millisecond))
		}
		s.dialing = make(chan struct{})
		c.mu.Unlock()

		mc, err := c.dial(ctx, i)

		c.mu.Lock()
		close(s.dialing)
		s.dialing = nil
		if err != nil {
			// A dial cut short because its caller gave up says nothing
			// of the server: the next caller dials again at once.
			if ctx.Err() == nil || c.ctx.Err() != nil {
				s.lastErr = err
				s.backoff = min(max(2*s.backoff, minBackoff), maxBackoff)
				s.retryAt = time.Now().Add(s.backoff)
			}
			c.mu.Unlock()
			return nil, err
		}
		s.lastErr, s.backoff = nil, 0
		s.conn = mc
		s.ready.Store(&readyConn{mc})
		c.dials++
		closed := c.ctx.Err() != nil
		c.mu.Unlock()
		if closed {
			mc.fail(ErrShutdown)
			return nil, ErrShutdown
		}
		return mc, nil
	}
}

// dial connects with Go's dialer (ctx, timeouts, name resolution), does
// the TLS handshake when the client has a TLS config (within the same
// bounds), and gives the connection to an engine: the reactors for a
// plain socket on Linux, the portable engine otherwise.
func (c *Client) dial(ctx context.Context, i int) (callConn, error) {
	// A dial ends with the caller's ctx, the dial timeout, or the client.
	ctx, cancel := context.WithTimeout(ctx, c.opts.dialTimeout)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	var d net.Dialer
	nc, err := d.DialContext(ctx, c.network, c.address)
	if err != nil {
		return nil, err
	}
	if cfg := c.opts.tlsConfig; cfg != nil {
		if cfg.ServerName == "" && (c.network != "unix") {
			cfg = cfg.Clone()
			if host, _, err := net.SplitHostPort(c.address); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("epollbatch: TLS handshake with %s: %w", c.address, err)
		}
		nc = tc
	}
	if cc, ok, err := c.dialReactor(nc, i); ok {
		return cc, err
	}
	return newPclientConn(c, nc), nil
}

// The errors of calls that a closed client ended: never sent (refused, or
// still queued), or sent.
var (
	errShutdownNotSent = fmt.Errorf("%w (%w)", ErrShutdown, ErrNotSent)
	errShutdownLost    = fmt.Errorf("%w (%w)", ErrShutdown, ErrConnLost)
)

// callError says why a call failed: the client was closed, the caller's
// ctx ended, or the connection failed (or could not be made). sent tells
// whether the call's request was written whole before that: the error
// wraps ErrConnLost if so, ErrNotSent if not.
func (c *Client) callError(ctx context.Context, serviceMethod string, err error, sent bool) error {
	var se ServerError
	if errors.As(err, &se) {
		return se
	}
	if c.ctx.Err() != nil || errors.Is(err, ErrShutdown) {
		if sent {
			return errShutdownLost
		}
		return errShutdownNotSent
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("epollbatch: call %s: %w", serviceMethod, cerr)
	}
	if sent {
		return fmt.Errorf("epollbatch: call %s: %w: %w", serviceMethod, ErrConnLost, err)
	}
	return fmt.Errorf("epollbatch: call %s: %w: %w", serviceMethod, ErrNotSent, err)
}
