// Package connpool is rpcsteps step 2: long-lived connections in a pool.
// A client keeps up to MaxOpenConns connections to its server and lends one
// to each call for its round trip; the server serves the requests of a
// connection one after another. Each connection owns its read and write
// buffers for its whole life, and the buffers a call encodes into come from
// a sync.Pool. The chapter (README.md) measures what that saves over v1,
// and what it still wastes: a connection carries one call at a time, and
// sits idle while the server works.
//
// A connection the server closed while it was idle in the pool (a restart,
// the server's idle timeout) is found dead when a call takes it, by a
// non-blocking peek, before anything is written; the call then moves to a
// new connection. A request that may have reached the server is never sent
// twice.
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
//	srv := connpool.NewServer()
//	srv.Register(Arith{})
//	ln, _ := net.Listen("tcp", "127.0.0.1:7000")
//	go srv.Serve(ln)
//
//	c, _ := connpool.Dial("tcp", "127.0.0.1:7000")
//	var sum int
//	err := c.Call(ctx, "Arith.Add", [2]int{1, 2}, &sum)
//
// Frames are those of package shared/protocol, bodies are encoded by a codec
// of shared/codec (Gob unless WithCodec says otherwise), and methods are
// found and run by shared/service, as in every rpcsteps version.
package connpool
