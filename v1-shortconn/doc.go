// Package shortconn is rpcsteps step 1: the simplest RPC that is correct. A
// call dials a new TCP connection, writes one request frame, reads one reply
// frame and closes; the server reads one request per connection, runs it,
// answers and closes. Buffers and objects are allocated fresh for every call.
// The chapter (README.md) measures what that costs; the later steps remove
// the costs one at a time, behind the same API.
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
//	srv := shortconn.NewServer()
//	srv.Register(Arith{})
//	ln, _ := net.Listen("tcp", "127.0.0.1:7000")
//	go srv.Serve(ln)
//
//	c, _ := shortconn.Dial("tcp", "127.0.0.1:7000")
//	var sum int
//	err := c.Call(ctx, "Arith.Add", [2]int{1, 2}, &sum)
//
// Frames are those of package shared/protocol, bodies are encoded by a codec
// of shared/codec (Gob unless WithCodec says otherwise), and methods are
// found and run by shared/service, as in every rpcsteps version.
package shortconn
