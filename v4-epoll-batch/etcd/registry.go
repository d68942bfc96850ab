package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// record is the value of a server's key.
type record struct {
	Network string `json:"network"`
	Addr    string `json:"addr"`
}

// dir returns prefix as the directory the keys go in: with one trailing
// "/".
func dir(prefix string) string { return strings.TrimRight(prefix, "/") + "/" }

// Key returns the key under which Register puts ep: prefix + "/" +
// ep.Network + "/" + ep.Addr.
func Key(prefix string, ep cluster.Endpoint) string {
	return dir(prefix) + ep.Network + "/" + ep.Addr
}

// decode parses a key's value; ok is false if it is not an endpoint.
func decode(v []byte) (cluster.Endpoint, bool) {
	var r record
	if json.Unmarshal(v, &r) != nil || r.Network == "" || r.Addr == "" {
		return cluster.Endpoint{}, false
	}
	return cluster.Endpoint{Network: r.Network, Addr: r.Addr}, true
}

// A Registration is one server's key in etcd, kept alive by a lease until
// Close. It is safe for concurrent use.
type Registration struct {
	cli *clientv3.Client
	key string
	val string
	o   options

	stop context.CancelFunc // ends keep
	done chan struct{}      // closed when keep has returned

	mu    sync.Mutex
	lease clientv3.LeaseID // the lease the key was last put with
	ttl   time.Duration    // that lease's TTL, as etcd granted it

	closeOnce sync.Once
	closeErr  error
}

// Register puts ep's key under prefix (see Key), attached to a new lease
// of WithTTL, and keeps the lease alive until Close; if the lease is lost
// (it expired while etcd was down or out of reach, or it was revoked), it
// registers again with a new one, with backoff (WithBackoff). ctx bounds
// this first registration only, each request also bounded by
// WithTimeout: once Register has returned, the Registration lasts until
// Close, whatever becomes of ctx. Register fails if ep has no network or
// no address, if the TTL is negative or too long for etcd, or if etcd
// does not answer.
func Register(ctx context.Context, cli *clientv3.Client, prefix string, ep cluster.Endpoint, opts ...Option) (*Registration, error) {
	o := newOptions(opts)
	if ep.Network == "" || ep.Addr == "" {
		return nil, fmt.Errorf("etcd: register %q: an endpoint needs a network and an address", ep.String())
	}
	if o.ttl < 0 {
		return nil, fmt.Errorf("etcd: register %s: negative TTL %v", ep, o.ttl)
	}
	val, err := json.Marshal(record{Network: ep.Network, Addr: ep.Addr})
	if err != nil {
		return nil, fmt.Errorf("etcd: register %s: %w", ep, err)
	}
	r := &Registration{
		cli:  cli,
		key:  Key(prefix, ep),
		val:  string(val),
		o:    o,
		done: make(chan struct{}),
	}
	if err := r.put(ctx); err != nil {
		return nil, err
	}
	// The keepalives outlive ctx: keep only its values.
	kctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r.stop = stop
	go r.keep(kctx)
	return r, nil
}

// Key returns the key the Registration puts.
func (r *Registration) Key() string { return r.key }

// TTL returns the TTL of the Registration's current lease, as etcd
// granted it: the requested TTL rounded up to whole seconds, and raised
// to etcd's minimum.
func (r *Registration) TTL() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ttl
}

func (r *Registration) leaseID() clientv3.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// ttlSeconds is d in etcd's unit, rounded up: etcd would take 0 as its
// minimum anyway, and a request for 1.5 s should not get 1 s.
func ttlSeconds(d time.Duration) int64 {
	s := d / time.Second
	if d%time.Second != 0 && s < math.MaxInt64 {
		s++
	}
	return int64(s)
}

// put grants a new lease and puts the key with it; on success the lease
// is the Registration's.
func (r *Registration) put(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.timeout)
	defer cancel()
	g, err := r.cli.Grant(ctx, ttlSeconds(r.o.ttl))
	if err != nil {
		return fmt.Errorf("etcd: register %s: grant a lease: %w", r.key, err)
	}
	if _, err := r.cli.Put(ctx, r.key, r.val, clientv3.WithLease(g.ID)); err != nil {
		// The put may have been applied all the same: revoking the lease
		// takes the key with it.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), r.o.timeout)
		defer rcancel()
		r.cli.Revoke(rctx, g.ID) // if this fails too, the lease expires by itself
		return fmt.Errorf("etcd: register %s: put: %w", r.key, err)
	}
	r.mu.Lock()
	r.lease, r.ttl = g.ID, time.Duration(g.TTL)*time.Second
	r.mu.Unlock()
	return nil
}

// keep keeps the lease alive until ctx ends, and registers again with a
// new lease each time the lease is lost.
func (r *Registration) keep(ctx context.Context) {
	defer close(r.done)
	var pause time.Duration
	for {
		since := time.Now()
		lease := r.leaseID()
		err := r.keepAlive(ctx, lease)
		if ctx.Err() != nil {
			return
		}
		if r.cli.Ctx().Err() != nil {
			r.o.logger.Warn("etcd: the etcd client is closed; the registration will expire", "key", r.key, "err", err)
			return
		}
		r.o.logger.Warn("etcd: lease lost; registering again", "key", r.key, "lease", int64(lease), "err", err)
		if time.Since(since) > r.TTL() {
			pause = 0 // it was a lease that lived, not one lost at once again
		}
		for {
			pause = r.o.next(pause)
			t := time.NewTimer(jitter(pause))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			err := r.put(ctx)
			if err == nil {
				r.o.logger.Info("etcd: registered again", "key", r.key, "lease", int64(r.leaseID()))
				break
			}
			if ctx.Err() != nil {
				return
			}
			if r.cli.Ctx().Err() != nil {
				r.o.logger.Warn("etcd: the etcd client is closed; the server stays unregistered", "key", r.key)
				return
			}
			r.o.logger.Warn("etcd: registering again failed", "key", r.key, "err", err, "pause", r.o.next(pause))
		}
	}
}

// keepAlive keeps lease alive until ctx ends or the client's keepalive
// channel closes: the lease expired, was revoked, or no keepalive was
// answered for its TTL.
func (r *Registration) keepAlive(ctx context.Context, lease clientv3.LeaseID) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := r.cli.KeepAlive(ctx, lease)
	if err != nil {
		return err
	}
	for range ch { // drained, or the client warns that the queue is full
	}
	return nil
}

// Close withdraws the registration: it stops the keepalives and revokes
// the lease, which deletes the key (unless another registration has put
// it since, under its own lease). It waits for etcd at most WithTimeout
// and returns etcd's error if the lease could not be revoked; the key
// then lasts until the lease expires. Close is idempotent: later calls
// return what the first returned.
func (r *Registration) Close() error {
	r.closeOnce.Do(func() {
		r.stop()
		<-r.done
		ctx, cancel := context.WithTimeout(context.Background(), r.o.timeout)
		defer cancel()
		_, err := r.cli.Revoke(ctx, r.leaseID())
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			// ErrLeaseNotFound: the lease expired, and the key with it.
			r.closeErr = fmt.Errorf("etcd: deregister %s: %w", r.key, err)
			r.o.logger.Warn("etcd: deregistering failed; the key lasts until its lease expires", "key", r.key, "err", err)
		}
	})
	return r.closeErr
}

// RegisterServer registers ep as Register does and withdraws it when
// srv's Shutdown or Close begins (srv.RegisterOnShutdown), before srv
// closes its listeners and drains its connections, then waits
// WithShutdownDelay. ep is the address clients dial, so call it once srv
// serves there. If srv's shutdown began before RegisterServer, the hook
// never runs: Close the Registration yourself. A Shutdown that begins
// while RegisterServer waits for etcd waits for it too (at most ctx, and
// WithTimeout per request), then withdraws what was registered. Closing
// the returned Registration early withdraws it as well.
func RegisterServer(ctx context.Context, cli *clientv3.Client, prefix string, srv *epollbatch.Server, ep cluster.Endpoint, opts ...Option) (*Registration, error) {
	// The hook goes in first, so that a Shutdown that begins while etcd
	// answers still finds it: it waits for Register's outcome.
	var reg *Registration
	registered := make(chan struct{})
	delay := newOptions(opts).shutdownDelay
	srv.RegisterOnShutdown(func() {
		<-registered
		if reg == nil {
			return
		}
		reg.Close() // a failure is logged; the lease then expires by itself
		if delay > 0 {
			time.Sleep(delay)
		}
	})
	r, err := Register(ctx, cli, prefix, ep, opts...)
	reg = r
	close(registered)
	return r, err
}
