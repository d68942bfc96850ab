package shortconn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
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

// Client calls the methods of one server. v1 holds no connection: every call
// dials the server, sends its request, reads the reply and closes. A Client
// is safe for concurrent use.
type Client struct {
	network, address string
	opts             clientOptions
	seq              atomic.Uint64

	// ctx ends when the client is closed; every call watches it, so that
	// calls in flight end at once.
	ctx    context.Context
	cancel context.CancelFunc
}

// Dial returns a client of the server at address. v1 connects lazily, once
// per call, so Dial only checks the network: it fails at once on an unknown
// one.
func Dial(network, address string, opts ...ClientOption) (*Client, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		return nil, fmt.Errorf("shortconn: dial %s %s: %w", network, address, net.UnknownNetworkError(network))
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{network: network, address: address, opts: newClientOptions(opts), ctx: ctx, cancel: cancel}, nil
}

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
		panic("shortconn: Go: done channel is unbuffered")
	}
	call := &Call{ServiceMethod: serviceMethod, Args: args, Reply: reply, Done: done}
	// v1's calls are synchronous: Go runs one on a goroutine of its own.
	go func() {
		call.Error = c.roundTrip(ctx, protocol.TypeRequest, serviceMethod, args, reply)
		select {
		case call.Done <- call:
		default:
			c.opts.logger.Debug("shortconn: Go: done channel full; completion dropped", "method", serviceMethod)
		}
	}()
	return call
}

// Notify calls serviceMethod with args one way: the server runs the method
// and sends no reply, and Notify returns once the request is written.
func (c *Client) Notify(ctx context.Context, serviceMethod string, args any) error {
	return c.roundTrip(ctx, protocol.TypeOneway, serviceMethod, args, nil)
}

// Close closes the client. Later calls return ErrShutdown, and calls in
// flight end at once with ErrShutdown. Close may be called more than once.
func (c *Client) Close() error {
	c.cancel()
	return nil
}

// roundTrip is the life of a v1 call: encode, dial, write, read, close.
func (c *Client) roundTrip(ctx context.Context, typ protocol.Type, serviceMethod string, args, reply any) (err error) {
	if c.ctx.Err() != nil {
		return ErrShutdown
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("shortconn: call %s: %w", serviceMethod, err)
	}
	seq := c.seq.Add(1)
	req, err := service.AppendRequest(ctx, nil, typ, seq, c.opts.codec, serviceMethod, args)
	if err != nil {
		return fmt.Errorf("shortconn: call %s: encoding the request: %w", serviceMethod, err)
	}

	// cctx ends with the caller's ctx or with the client.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopWatch := context.AfterFunc(c.ctx, cancel)
	defer stopWatch()
	defer func() {
		if err != nil {
			err = c.callError(ctx, serviceMethod, err)
		}
	}()

	d := net.Dialer{Timeout: c.opts.dialTimeout}
	conn, err := d.DialContext(cctx, c.network, c.address)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := cctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// A ctx that ends unblocks the reads and writes below at once.
	stop := context.AfterFunc(cctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(req); err != nil {
		return err
	}
	if typ == protocol.TypeOneway {
		return nil
	}
	var f protocol.Frame
	// A new reader and buffer per call: v1 allocates everything fresh.
	if _, err := protocol.ReadFrame(bufio.NewReader(conn), c.opts.maxFrameSize, &f, nil); err != nil {
		return err
	}
	if f.Type != protocol.TypeReply || f.Seq != seq {
		return fmt.Errorf("unexpected %s frame with seq %d (want the reply to %d)", f.Type, f.Seq, seq)
	}
	if !stop() { // the ctx ended while the reply arrived: it is late
		return cctx.Err()
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		// Read at or after the deadline, before ctx's own timer fired
		// (the server's timer, started from the same deadline, can win).
		return context.DeadlineExceeded
	}
	return service.DecodeReply(&f, reply)
}

// callError says why a call failed: the client was closed, the caller's
// ctx ended, or the connection failed.
func (c *Client) callError(ctx context.Context, serviceMethod string, err error) error {
	var se ServerError
	if errors.As(err, &se) {
		return se
	}
	if c.ctx.Err() != nil {
		return ErrShutdown
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("shortconn: call %s: %w", serviceMethod, cerr)
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		// The connection's deadline, which is ctx's, fired before ctx's timer.
		return fmt.Errorf("shortconn: call %s: %w", serviceMethod, context.DeadlineExceeded)
	}
	return fmt.Errorf("shortconn: call %s: %w", serviceMethod, err)
}
