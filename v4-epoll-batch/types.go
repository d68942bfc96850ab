package epollbatch

import (
	"context"
	"errors"
	"log/slog"

	"github.com/rpcsteps/rpcsteps/shared/service"
)

// ErrShutdown is returned by the calls of a closed Client.
var ErrShutdown = service.ErrShutdown

// ErrNotSent is wrapped by the error of a call whose request never
// reached a server: its connection could not be made (the dial failed, or
// the client is waiting out the pause after a failed one), the client
// refused it before it was queued (closed, or the connection found dead),
// or the connection failed before the whole request was written to the
// socket. A server runs only a request it received whole, so the method
// did not run: sending the call again, to this server or another, is
// safe. Test with errors.Is(err, ErrNotSent); the error wraps the cause
// too (a net.OpError, ErrShutdown, ...). A call whose ctx ended reports
// the ctx's error instead, and one whose arguments do not encode an error
// of its own.
var ErrNotSent = errors.New("request not sent")

// ErrConnLost is wrapped by the error of a call whose request was written
// to its connection, which then failed before the reply came (the server
// closed it or died, a read or write failed, pings went unanswered): the
// server may have received the request and run the method, or not; no
// one can tell. Send such a call again only if running it twice is
// harmless. Test with errors.Is(err, ErrConnLost); the error wraps the
// cause too. "Written" means handed to the socket: bytes a server never
// received count as written.
var ErrConnLost = errors.New("connection lost after the request was sent: it may have run")

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = service.ErrServerClosed

// ServerError is an error that happened on the server's side of a call: the
// method's own error, or a failure to find, decode or run it. Its text is the
// method's error text.
type ServerError = service.ServerError

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
	// sentEnd is where the request's frame ends in its connection's
	// stream of written bytes, once queued for the writer; 0 before (see
	// sent).
	sentEnd int64
}

// sent reports whether the call's request was written whole, written
// being the count of bytes of the stream whose frames were written whole.
func (call *Call) sent(written int64) bool {
	return call.sentEnd > 0 && call.sentEnd <= written
}

// complete delivers the call. Only the party that removed the call from its
// connection's pending map (or never put it there) calls it.
func (call *Call) complete(err error) {
	call.Error = err
	select {
	case call.Done <- call:
	default:
		call.logger.Debug("epollbatch: Go: done channel full; completion dropped", "method", call.ServiceMethod)
	}
}

// ServerStats are figures of a server.
type ServerStats struct {
	Conns       int   // connections open now
	InFlight    int   // requests (and pings) read whose reply is not yet written
	Writes      int64 // write calls: the reactors' writev, the portable engine's writes
	Frames      int64 // frames they wrote: Frames/Writes is the batching
	WorkersBusy int   // workers running a method (or a batch of them) now
	Workers     int   // workers alive now
	Overloaded  int64 // requests refused a worker: answered "overloaded" (or "closing"), or dropped if one-way
	Requests    int64 // requests handed to workers, directly or through the queue of quick batches
	Handoffs    int64 // worker wake-ups that carried them: Requests/Handoffs is the batching of quick methods, the queue's included
	Spills      int64 // batches that ran long and handed their rest to another worker
	Queued      int64 // quick batches that waited for a busy worker instead of waking one
	Stalls      int64 // times a queued batch waited queueStall (1 ms) and woke another worker
}

// Stats are figures of a client.
type Stats struct {
	Conns   int   // connections open now
	Pending int   // calls waiting for their reply now
	Dials   int64 // connections made
	Writes  int64 // write calls (writev on the reactors); with shared reactors, every client's
	Frames  int64 // frames they wrote
}
