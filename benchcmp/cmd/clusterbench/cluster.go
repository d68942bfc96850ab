package main

import (
	"github.com/rpcsteps/rpcsteps/shared/codec"
	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// This file is all clusterbench knows of the cluster package.

// dialCluster returns one cluster client over the servers at addrs (TCP),
// with the balancer named p2c or rr. The payloads travel with codec.Raw,
// as in every benchcmp measurement.
func dialCluster(addrs []string, balancer string) (*cluster.Client, error) {
	eps := make(cluster.Static, len(addrs))
	for i, a := range addrs {
		eps[i] = cluster.Endpoint{Network: "tcp", Addr: a}
	}
	b := cluster.P2C()
	if balancer == "rr" {
		b = cluster.RoundRobin()
	}
	return cluster.Dial(eps,
		cluster.WithBalancer(b),
		cluster.WithClientOptions(epollbatch.WithCodec(codec.Raw)))
}

// statsByAddr reads the client's Stats, by endpoint address.
func statsByAddr(c *cluster.Client) map[string]cluster.EndpointStats {
	m := make(map[string]cluster.EndpointStats)
	for _, s := range c.Stats() {
		m[s.Endpoint.Addr] = s
	}
	return m
}

// attempts is the sum of the endpoints' Calls: every time a call was
// sent to one (or tried: a failed dial counts). Less the calls made, it
// is how many times calls were sent again, elsewhere.
func attempts(c *cluster.Client) int64 {
	var n int64
	for _, s := range c.Stats() {
		n += s.Calls
	}
	return n
}

// outOfBalancer reports whether the endpoint at addr is out of the
// balancer: not up (backoff, say), or no longer listed at all. (Stats
// itself takes an endpoint up whose connections were all found dead out
// of the choice, as the next call to pick it would; with callers calling
// all the time, that comes at once anyway.)
func outOfBalancer(c *cluster.Client, addr string) bool {
	s, ok := statsByAddr(c)[addr]
	return !ok || s.State != cluster.StateUp
}
