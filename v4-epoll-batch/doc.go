// Package epollbatch is rpcsteps step 4, and the version to import: an RPC
// server and client driven by epoll reactors instead of a goroutine per
// connection, on Linux, with a portable engine for everything else.
//
// Serve's accept loop is the main reactor: it calls the listener's Accept
// (any net.Listener) and hands each plain TCP or Unix socket to one of N
// sub-reactors (WithReactors; GOMAXPROCS by default), each one goroutine
// owning its connections: level-triggered epoll, non-blocking reads into
// a per-connection buffer, every complete frame decoded without waiting.
// Methods run on a bounded pool of workers (WithWorkers; the quick
// requests of one read share one); replies go into each connection's
// ring (many producers, one consumer), drained by its reactor into one
// writev. A connection with too many requests in flight stops being read
// until replies go out; a client that half-closes still gets its replies;
// idle connections close on a timing wheel. The client multiplexes calls
// over one connection as v3 does, on reactors that all clients share
// (started by the first Dial, stopped when the last Client closes).
//
// The portable engine serves what epoll cannot take: TLS connections
// (Serve a tls.NewListener; WithTLSConfig on the client), connections
// without a descriptor of their own, and every connection on systems
// without epoll (macOS, Windows, the BSDs). It reads and writes each
// connection with two goroutines over its net.Conn, speaks the same
// frames, and keeps the same options, limits, back-pressure, shutdown and
// Stats. WithPortableEngine (or the build tag rpcsteps_portable) uses it
// for everything.
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
// do a panic in the method, an unknown service or method, arguments that
// do not decode, and a request that finds every worker busy.
//
// Methods run on an ants/v2 pool (github.com/panjf2000/ants/v2) of the
// server's own. Importing ants starts its package-level default pool, two
// goroutines, at program start; v4 never uses it. Apart from that nothing
// is started at import time: a Server's reactors and workers start with
// Serve and stop with Close; the clients' shared reactors start with the
// first Dial and stop when the last Client closes.
package epollbatch
