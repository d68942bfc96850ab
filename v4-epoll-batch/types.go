package epollbatch

import (
	"context"
	"log/slog"

	"github.com/rpcsteps/rpcsteps/shared/service"
)

// ErrShutdown is returned by the calls of a closed Client.
var ErrShutdown = service.ErrShutdown

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
	Overloaded  int64 // requests answered "overloaded"
	Requests    int64 // requests handed to workers
	Handoffs    int64 // hand-offs that carried them: Requests/Handoffs is the batching of quick methods
	Spills      int64 // batches that ran long and handed their rest to another worker
}

// Stats are figures of a client.
type Stats struct {
	Conns   int   // connections open now
	Pending int   // calls waiting for their reply now
	Dials   int64 // connections made
	Writes  int64 // write calls (writev on the reactors); with shared reactors, every client's
	Frames  int64 // frames they wrote
}
