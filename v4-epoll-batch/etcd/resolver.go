package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// A Resolver is a cluster.Resolver over the servers registered under a
// prefix in etcd. It holds no state between Watch calls, so one Resolver
// may serve several clients.
type Resolver struct {
	cli    *clientv3.Client
	prefix string // with its trailing "/"
	o      options
}

var _ cluster.Resolver = (*Resolver)(nil)

// NewResolver returns a Resolver over the keys Register puts under prefix.
// Of the options, it takes WithTimeout (each read of the prefix),
// WithBackoff (between attempts after a failure) and WithLogger. It
// starts nothing: each Watch reads and watches etcd itself.
func NewResolver(cli *clientv3.Client, prefix string, opts ...Option) *Resolver {
	return &Resolver{cli: cli, prefix: dir(prefix), o: newOptions(opts)}
}

// Watch reads every key under the prefix and reports their endpoints,
// sorted and without duplicates, then watches the prefix from the
// revision it read and reports the set again each time it changes. When
// the watch fails (etcd restarted and has no leader yet, the revision was
// compacted, etcd cannot be reached for longer than the client waits), it
// keeps the last set, reads the prefix again with backoff and watches
// from there, reporting the set only if it differs from the last one
// reported. It returns ctx.Err() when ctx ends, or an error if the etcd
// client is closed.
func (r *Resolver) Watch(ctx context.Context, update func([]cluster.Endpoint)) error {
	var last []cluster.Endpoint
	reported := false
	report := func(set map[string]cluster.Endpoint) {
		eps := endpoints(set)
		if reported && slices.Equal(eps, last) {
			return
		}
		reported, last = true, eps
		update(slices.Clone(eps))
	}
	var pause time.Duration
	for {
		set, rev, err := r.read(ctx)
		if err == nil {
			report(set)
			since := time.Now()
			err = r.follow(ctx, set, rev+1, report)
			if time.Since(since) > r.o.maxBackoff {
				pause = 0 // the watch lived: start the backoff again
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.cli.Ctx().Err() != nil {
			// Not wrapping the client's context.Canceled: that would read
			// as the caller's ctx ending.
			return fmt.Errorf("etcd: resolve %s: the etcd client is closed", r.prefix)
		}
		pause = r.o.next(pause)
		r.o.logger.Warn("etcd: resolver lost its view; reading again", "prefix", r.prefix, "err", err, "pause", pause)
		t := time.NewTimer(jitter(pause))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// read returns the endpoints under the prefix, by key, and the revision
// they were read at.
func (r *Resolver) read(ctx context.Context) (map[string]cluster.Endpoint, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, r.o.timeout)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("etcd: resolve %s: %w", r.prefix, err)
	}
	set := make(map[string]cluster.Endpoint, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		r.apply(set, string(kv.Key), kv.Value)
	}
	return set, resp.Header.Revision, nil
}

// apply records the value put at key in set.
func (r *Resolver) apply(set map[string]cluster.Endpoint, key string, value []byte) {
	ep, ok := decode(value)
	if !ok {
		r.o.logger.Warn("etcd: skipping a key whose value is not an endpoint", "key", key, "value", string(value))
		delete(set, key)
		return
	}
	set[key] = ep
}

// follow applies the changes under the prefix from revision rev to set,
// reporting it after each batch of events, until the watch fails or ctx
// ends.
func (r *Resolver) follow(ctx context.Context, set map[string]cluster.Endpoint, rev int64, report func(map[string]cluster.Endpoint)) error {
	// WithRequireLeader: a member cut off from the others ends the watch
	// instead of serving a view that no longer changes.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range r.cli.Watch(ctx, r.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("etcd: watch %s: %w", r.prefix, err)
		}
		for _, ev := range resp.Events {
			switch ev.Type {
			case clientv3.EventTypePut:
				r.apply(set, string(ev.Kv.Key), ev.Kv.Value)
			case clientv3.EventTypeDelete:
				delete(set, string(ev.Kv.Key))
			}
		}
		report(set)
	}
	return errors.New("etcd: watch " + r.prefix + ": closed")
}

// endpoints returns the endpoints of set, sorted, each once.
func endpoints(set map[string]cluster.Endpoint) []cluster.Endpoint {
	eps := make([]cluster.Endpoint, 0, len(set))
	for _, ep := range set {
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b cluster.Endpoint) int {
		return cmp.Or(cmp.Compare(a.Network, b.Network), cmp.Compare(a.Addr, b.Addr))
	})
	return slices.Compact(eps)
}
