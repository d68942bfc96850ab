// Package cluster is a client over many rpcsteps v4 servers: a Resolver
// says which servers exist, a Balancer picks one for each call, and a
// call is sent again elsewhere only when it provably never left for the
// server it was meant for (or the caller marked it idempotent).
//
//	c, err := cluster.Dial(cluster.DNS("_rpc._tcp.arith.prod.svc.cluster.local"),
//		cluster.WithBalancer(cluster.P2C()),
//		cluster.WithClientOptions(epollbatch.WithPingInterval(time.Second)))
//	...
//	err = c.Call(ctx, "Arith.Add", args, &sum)
//
// # Endpoints
//
// The resolver (Static, DNS, or one of your own: an etcd watch, say) lists
// the endpoints; each one listed is dialed (epollbatch.DialContext, with
// WithClientOptions) and, once connected, is up: one epollbatch.Client,
// over whose connection the client's calls to that server multiplex. Its
// states (Stats reports them):
//
//	listed ──▶ connecting ──dial ok──▶ up ──connection failed──▶ backoff ──dial ok──▶ up
//	               │                                                ▲ │
//	               └──────────── dial failed ───────────────────────┘ └─ dial failed: a longer pause
//	any state ── no longer listed ──▶ draining: calls in flight end, then the connection closes
//
// An endpoint whose connection fails (a read or write fails, the server
// closes it, or pings go unanswered: epollbatch.WithPingInterval, which
// finds a server dead even if it vanished without a word) is taken out of
// the Balancer's choice at once and dialed again after a pause, from
// WithBackoff's min, doubling after each failed dial up to its max, with
// jitter. An endpoint the resolver no longer lists takes no new calls;
// its calls in flight run to their end (they were sent: cutting them
// would fail calls that may succeed), then its connection is closed. So
// a server that is deregistered before it stops (Server.RegisterOnShutdown)
// loses no call.
//
// # Failover
//
// A call goes to one endpoint up, chosen by the Balancer. If it fails
// because of the endpoint, what happens next depends on whether the
// server may have run it, which v4's client tells
// (epollbatch.ErrNotSent, epollbatch.ErrConnLost):
//
//   - not sent (the dial failed; the connection failed before the request
//     was written; it was refused as the connection was found dead): the
//     call is sent to another endpoint up, one it has not tried, at once.
//     The server never had it, so this is always safe.
//   - sent, then the connection failed: the call fails with an error that
//     wraps epollbatch.ErrConnLost: it may have run, and only the caller
//     knows whether running it twice is harmless. A call whose ctx was
//     marked Idempotent is sent to another endpoint instead, once to each
//     at most, as long as its ctx allows.
//   - anything else (the method's error, the ctx's, arguments that do not
//     encode, a reply that does not decode): the call's own outcome,
//     returned as it is.
//
// With no endpoint up, a call fails at once with an error that wraps
// ErrNoEndpoints and epollbatch.ErrNotSent, rather than waiting for a
// server that may never come back; except while an endpoint is on its
// first dial (just after Dial, or just listed), which a call waits for,
// as long as its ctx allows.
//
// # Balancers
//
// RoundRobin (the default) sends calls to the endpoints in turn; P2C
// draws two at random and takes the one with fewer calls in flight, which
// steers calls away from a slow server with no help from the servers.
// A Balancer of your own sees the call's ctx and method, and the
// Backends up with their calls in flight.
package cluster
