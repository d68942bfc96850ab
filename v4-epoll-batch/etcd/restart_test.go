package etcd

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// etcd itself stops and starts again, on the same data and ports. While
// it is down, the resolver keeps its last set (reports nothing). Once it
// is back: a registration whose lease outlived the outage keeps it; one
// whose TTL (1 s) passed while etcd was down has lost its lease, and
// registers again with a new one; the resolver reports the changes made
// after the restart.
func TestEtcdRestart(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	w := watch(t, NewResolver(te.client(te.endpoint()), "/restart", WithBackoff(50*time.Millisecond, 200*time.Millisecond)))
	back := WithBackoff(50*time.Millisecond, 200*time.Millisecond)

	short, err := Register(context.Background(), cli, "/restart", ep(1), WithTTL(time.Second), back)
	require.NoError(t, err)
	defer short.Close()
	long, err := Register(context.Background(), cli, "/restart", ep(2), WithTTL(time.Minute), back)
	require.NoError(t, err)
	defer long.Close()
	w.waitFor(t, 5*time.Second, ep(1), ep(2))
	shortLease, longLease := short.leaseID(), long.leaseID()

	before, _ := w.snapshot()
	te.stop()
	// Longer than short's TTL: its client gives its lease up.
	time.Sleep(2500 * time.Millisecond)
	during, _ := w.snapshot()
	require.Equal(t, before, during, "the resolver reported a set while etcd was down")
	te.start()

	// short registers again; its old lease, restored by etcd with a fresh
	// TTL, expires a moment later without taking the key.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.Eventually(t, func() bool {
		resp, err := cli.Get(ctx, short.Key())
		return err == nil && len(resp.Kvs) == 1 && resp.Kvs[0].Lease == int64(short.leaseID()) && short.leaseID() != shortLease
	}, 10*time.Second, 20*time.Millisecond, "the registration whose lease expired did not register again")
	require.Equal(t, longLease, long.leaseID(), "the registration whose lease outlived the outage registered again")

	third, err := Register(ctx, cli, "/restart", ep(3), back)
	require.NoError(t, err)
	defer third.Close()
	w.waitFor(t, 5*time.Second, ep(1), ep(2), ep(3))
	require.NoError(t, long.Close())
	w.waitFor(t, 5*time.Second, ep(1), ep(3))

	// The old lease is gone by now (its TTL, 1 s, plus the election
	// etcd adds when it restores leases), and ep(1) is still there.
	resp, err := cli.TimeToLive(ctx, shortLease)
	if err == nil && resp.TTL > 0 {
		time.Sleep(time.Duration(resp.TTL+1) * time.Second)
	}
	got, err := cli.Get(ctx, "/restart/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Equal(t, int64(2), got.Count)
	ups, _ := w.snapshot()
	require.Equal(t, []cluster.Endpoint{ep(1), ep(3)}, ups[len(ups)-1])
}
