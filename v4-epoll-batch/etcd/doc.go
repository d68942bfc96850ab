// Package etcd registers rpcsteps v4 servers in etcd and resolves them
// for the cluster client: Register (or RegisterServer, tied to an
// epollbatch.Server) puts one key per server under a prefix, held by a
// lease that it keeps alive, and NewResolver watches the prefix and tells
// a cluster.Client which servers exist.
//
// It is a Go module of its own, github.com/rpcsteps/rpcsteps/v4-epoll-batch/etcd,
// so that importing v4 or its cluster package does not pull in etcd's
// client and its dependencies; only a program that imports this package
// does.
//
// # Keys and values
//
// A server at endpoint ep is the key prefix + "/" + ep.Network + "/" +
// ep.Addr, whose value is the endpoint in JSON:
//
//	/rpcsteps/arith/tcp/10.0.0.7:9000 = {"network":"tcp","addr":"10.0.0.7:9000"}
//
// The resolver reads only the values, so a key may be written by another
// tool as long as its value has that form; a value that does not parse is
// skipped (and logged). A trailing "/" on the prefix is ignored, and the
// resolver watches prefix + "/", so that the prefix "/svc" does not also
// take "/svc2".
//
// # Leases
//
// The key is attached to a lease of WithTTL (DefaultTTL, 10 s), which a
// Registration keeps alive: etcd deletes the key when the lease expires,
// so a server that crashes, freezes or is cut off from etcd disappears
// from every resolver within about its TTL. etcd counts leases in whole
// seconds, and raises a TTL below its minimum to that minimum: 1.5 x the
// election timeout, rounded up to a second (2 s with etcd's default
// 1,000 ms election timeout); (*Registration).TTL says what etcd granted.
// If the lease is lost all the same (etcd was down, or unreachable, for
// longer than the TTL, or someone revoked the lease), the Registration
// registers again with a new lease, pausing between failed attempts with a
// growing backoff (WithBackoff), until it succeeds or is closed. It learns
// of the loss from its next keepalive, at most a third of the TTL later,
// or when no keepalive has been answered for a TTL. It does not watch its
// key: a key deleted by hand while its lease lives stays deleted until
// the Registration is closed or loses its lease.
//
// # Shutdown
//
// Close revokes the lease, which deletes the key: at once, where a crash
// would leave it for a TTL. It does not delete the key unconditionally: a
// successor at the same address may have put it again under its own
// lease, and that key stays. RegisterServer closes the Registration when
// the server's Shutdown or Close begins, before the listeners close and
// the connections drain, and can hold the shutdown for WithShutdownDelay
// so that resolvers and their clients stop choosing the server while it
// still reads requests.
//
// # The etcd client
//
// The *clientv3.Client is the caller's: this package never closes it;
// close the Registrations and end the Watch calls before closing it.
// A Resolver and a Registration survive an etcd restart, but how soon they
// notice that etcd is back depends on the client's gRPC reconnection
// backoff, which grows to 120 s by default; a client that should notice
// within a second or so sets clientv3.Config.DialOptions to
// grpc.WithConnectParams with a smaller backoff.MaxDelay.
//
// Nothing is logged unless WithLogger is given.
package etcd
