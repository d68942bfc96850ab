// Package pipeline is rpcsteps step 3: many calls in flight on one
// connection. Every request carries a sequence ID; the client registers the
// call in a pending map under that ID before the request is written, one
// reader goroutine per connection matches each reply to its call by ID, and
// one writer goroutine writes whatever requests have queued up in one write.
// The server reads a connection's requests as they come, runs each on its
// own goroutine, and writes the replies as they finish, in any order, so a
// slow method delays no other. The chapter (README.md) measures what that
// buys over v2's pool, and what it still costs: goroutines per connection
// and per request, and a write system call per batch.
//
// A connection that breaks fails its pending calls at once, and the next
// call connects again (after a failed dial, with a growing pause). An idle
// connection is pinged; one that stays silent is found dead, even when
// what the client sends is stuck behind a server that stopped reading. The
// server stops reading a connection that has too many requests in flight
// (WithMaxInFlight, WithMaxBytesInFlight), so that a client that never reads
// its replies cannot exhaust it. The bytes in flight count the replies not
// yet written too: a reply that would take a connection past
// WithMaxBytesInFlight while other replies still wait to be written is
// refused, and its caller gets a ServerError saying so; a reply alone is
// always let in, however large.
//
// # Methods
//
// A server publishes the methods of the receivers given to Register, with
// net/rpc's rules: a method is served when its receiver's type is exported
// (or registered with RegisterName), the method is exported, it has two
// arguments of exported or builtin types, the second a pointer, and it
// returns an error:
//
//	func (t *T) MethodName(args A, reply *R) error
//
// It may take a [context.Context] first; the ctx carries the caller's
// deadline, sent as the time the caller has left:
//
//	func (t *T) MethodName(ctx context.Context, args A, reply *R) error
//
// A method's error reaches the caller as a [ServerError] with its text; so
// do a panic in the method, an unknown service or method, and arguments that
// do not decode.
//
// # Example
//
//	type Arith struct{}
//
//	func (Arith) Add(args [2]int, sum *int) error {
//		*sum = args[0] + args[1]
//		return nil
//	}
//
//	srv := pipeline.NewServer()
//	srv.Register(Arith{})
//	ln, _ := net.Listen("tcp", "127.0.0.1:7000")
//	go srv.Serve(ln)
//
//	c, _ := pipeline.Dial("tcp", "127.0.0.1:7000")
//	var sum int
//	err := c.Call(ctx, "Arith.Add", [2]int{1, 2}, &sum)
//
// Frames are those of package shared/protocol, bodies are encoded by a codec
// of shared/codec (Gob unless WithCodec says otherwise), and methods are
// found and run by shared/service, as in every rpcsteps version.
package pipeline
