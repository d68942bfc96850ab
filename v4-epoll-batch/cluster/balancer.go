package cluster

import (
	"context"
	"math/rand/v2"
	"sync/atomic"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// A Balancer chooses the server of each call among those that are up.
//
// Pick returns the index, in up, of the backend to send the call to; an
// index out of range is taken modulo len(up). up is never empty and holds
// only backends that are up; a call being sent again after a failure gets
// the backends it has not tried yet. Pick must not change up nor keep it
// past its return (the Client reuses it), and must not block: many calls
// pick at once, so Pick must be safe for concurrent use. ctx is the call's
// (with its metadata: epollbatch.FromOutgoingContext) and serviceMethod
// its "Service.Method", for a balancer that routes by key or by method;
// rendezvous hashing (the backend whose hash of key and Endpoint is
// highest) routes a key to the same server without keeping any state.
//
// A Balancer is given to one Client or several (WithBalancer); what it
// counts it may count across all of them.
type Balancer interface {
	Pick(ctx context.Context, serviceMethod string, up []*Backend) int
}

// BalancerFunc is a Balancer made of its Pick.
type BalancerFunc func(ctx context.Context, serviceMethod string, up []*Backend) int

// Pick calls f.
func (f BalancerFunc) Pick(ctx context.Context, serviceMethod string, up []*Backend) int {
	return f(ctx, serviceMethod, up)
}

// A Backend is the client's connection to one endpoint that is up, as a
// Balancer sees it. When the endpoint's connection fails and is made
// again, the endpoint gets a new Backend.
type Backend struct {
	ep *endpoint
	cl *epollbatch.Client

	// refs counts the calls using the backend (its calls in flight), and
	// has retired set once no new call may start on it: the last call to
	// end then closes it (see acquire, release, retire).
	refs atomic.Int64

	closing bool // (under Client.mu) its close has begun
}

// retired marks a Backend that takes no new calls.
const retired = 1 << 62

// Endpoint returns the endpoint the backend is connected to.
func (b *Backend) Endpoint() Endpoint { return b.ep.ep }

// InFlight returns the calls of this client on the backend now: sent, or
// about to be, and not yet complete. It is what P2C compares.
func (b *Backend) InFlight() int { return int(b.refs.Load() &^ retired) }

// acquire counts a call on b, unless b is retired.
func (b *Backend) acquire() bool {
	if b.refs.Add(1)&retired != 0 {
		b.release()
		return false
	}
	return true
}

// release ends a call on b; the last one on a retired backend closes it.
func (b *Backend) release() {
	if b.refs.Add(-1) == retired {
		b.ep.c.closeBackend(b)
	}
}

// RoundRobin returns a Balancer that sends the calls to the backends in
// turn, from a random first one.
func RoundRobin() Balancer {
	r := &roundRobin{}
	r.next.Store(rand.Uint64())
	return r
}

type roundRobin struct{ next atomic.Uint64 }

func (r *roundRobin) Pick(_ context.Context, _ string, up []*Backend) int {
	return int((r.next.Add(1) - 1) % uint64(len(up)))
}

// P2C returns a Balancer of the power of two choices: for each call it
// draws two backends at random and takes the one with fewer calls in
// flight (Backend.InFlight, counted by the client itself, so that it
// needs nothing from the servers). A slow or stalled server keeps its
// calls longer, so it gets fewer new ones; a fast one gets more. It
// avoids what least-loaded-of-all would do: every client sending its next
// calls to the same server, the one that looked least loaded a moment
// ago.
func P2C() Balancer { return p2c{} }

type p2c struct{}

func (p2c) Pick(_ context.Context, _ string, up []*Backend) int {
	n := len(up)
	if n == 1 {
		return 0
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	if up[j].InFlight() < up[i].InFlight() {
		return j
	}
	return i
}
