package cluster

import (
	"context"
	"slices"
)

// Endpoint is one server a Client may call.
type Endpoint struct {
	Network string // "tcp" or "unix", as for epollbatch.Dial
	Addr    string // the address to dial
}

// String returns "network/addr".
func (e Endpoint) String() string { return e.Network + "/" + e.Addr }

// Resolver tells a Client which servers exist, and keeps telling it as
// they come and go.
type Resolver interface {
	// Watch calls update with the complete set of endpoints as soon as it
	// is known, then again each time the set changes, until ctx ends; it
	// then returns ctx.Err(). A failure it cannot recover from ends Watch
	// with that error; a passing one (a DNS lookup that times out, an
	// etcd member restarting) keeps the last set and tries again. update
	// is never called concurrently with itself, owns the slice it is
	// given, and must return quickly.
	Watch(ctx context.Context, update func([]Endpoint)) error
}

// Static is a Resolver over a fixed list of endpoints.
type Static []Endpoint

// Watch reports the list once, then waits for ctx to end.
func (s Static) Watch(ctx context.Context, update func([]Endpoint)) error {
	update(slices.Clone(s))
	<-ctx.Done()
	return ctx.Err()
}
