// Package cluster is a client over many rpcsteps v4 servers: a Resolver
// says which servers exist, a Balancer picks one for each call, and a
// call is sent again elsewhere only when it provably never left for the
// server it was meant for (or the caller marked it idempotent).
package cluster
