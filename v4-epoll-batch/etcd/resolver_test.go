package etcd

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// The resolver reports the set at once, even empty, then each change:
// sorted, each endpoint once (two keys may hold the same endpoint),
// skipping values that are not endpoints, and not taking the keys of a
// longer prefix. A value that stops parsing drops its endpoint.
func TestResolverReports(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	ctx := context.Background()
	_, err := cli.Put(ctx, "/svc2/tcp/10.0.0.9:9000", `{"network":"tcp","addr":"10.0.0.9:9000"}`)
	require.NoError(t, err)

	w := watch(t, NewResolver(cli, "/svc"))
	w.waitFor(t, 5*time.Second) // empty, reported

	_, err = cli.Put(ctx, "/svc/b", `{"network":"tcp","addr":"10.0.0.2:9000"}`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/svc/a", `{"network":"tcp","addr":"10.0.0.1:9000"}`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/svc/a-again", `{"network":"tcp","addr":"10.0.0.1:9000"}`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/svc/garbage", `not json`)
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, ep(1), ep(2))
	ups, _ := w.snapshot()
	require.Equal(t, []cluster.Endpoint{ep(1), ep(2)}, ups[len(ups)-1], "not sorted")

	_, err = cli.Put(ctx, "/svc/b", `{"network":"tcp"}`)
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, ep(1))
	_, err = cli.Delete(ctx, "/svc/a")
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/svc/c", `{"network":"tcp","addr":"10.0.0.3:9000"}`)
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, ep(1), ep(3)) // "/svc/a-again" holds ep(1)

	// A change that leaves the set as it was is not reported.
	before, _ := w.snapshot()
	_, err = cli.Put(ctx, "/svc/garbage", `still not json`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/svc/c", `{"network":"tcp","addr":"10.0.0.3:9000"}`)
	require.NoError(t, err)
	_, err = cli.Put(ctx, "/svc/d", `{"network":"tcp","addr":"10.0.0.4:9000"}`)
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, ep(1), ep(3), ep(4))
	after, _ := w.snapshot()
	require.Len(t, after, len(before)+1, "a change that left the set as it was was reported")
}

// A watch that resumes at a revision etcd has compacted fails; the
// resolver then keeps its last set, reads the prefix again and reports
// the set it finds, and watches from there. The resolver's client is cut
// off while the set changes and etcd compacts.
func TestResolverCompacted(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	cut := newCutter(t, te.endpoint())
	w := watch(t, NewResolver(te.client(cut.addr()), "/compacted", WithBackoff(10*time.Millisecond, 100*time.Millisecond)))
	w.waitFor(t, 5*time.Second)
	ctx := context.Background()
	_, err := cli.Put(ctx, "/compacted/1", `{"network":"tcp","addr":"10.0.0.1:9000"}`)
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, ep(1))

	cut.setCut(true)
	_, err = cli.Delete(ctx, "/compacted/1")
	require.NoError(t, err)
	resp, err := cli.Put(ctx, "/compacted/2", `{"network":"tcp","addr":"10.0.0.2:9000"}`)
	require.NoError(t, err)
	_, err = cli.Compact(ctx, resp.Header.Revision)
	require.NoError(t, err)
	ups, _ := w.snapshot()
	require.Equal(t, []cluster.Endpoint{ep(1)}, ups[len(ups)-1], "cut off, the resolver changed its set")

	cut.setCut(false)
	w.waitFor(t, 10*time.Second, ep(2))
	// It watches again: later changes arrive.
	_, err = cli.Put(ctx, "/compacted/3", `{"network":"tcp","addr":"10.0.0.3:9000"}`)
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, ep(2), ep(3))
	// Nothing else was reported: not an empty set while the watch had
	// failed, not the same set twice.
	ups, _ = w.snapshot()
	require.Equal(t, [][]cluster.Endpoint{{}, {ep(1)}, {ep(2)}, {ep(2), ep(3)}}, ups)
}

// Watch returns ctx.Err() when its ctx ends (see watch), and an error,
// not a set, when the etcd client is closed.
func TestResolverClientClosed(t *testing.T) {
	te := newEtcd(t)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{te.endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	require.NoError(t, err)
	done := make(chan error, 1)
	reported := make(chan []cluster.Endpoint, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		done <- NewResolver(cli, "/closed").Watch(ctx, func(eps []cluster.Endpoint) { reported <- eps })
	}()
	require.Empty(t, <-reported)
	cli.Close()
	select {
	case err := <-done:
		require.Error(t, err)
		require.NotErrorIs(t, err, context.Canceled, "reads as if Watch's ctx had ended")
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after its etcd client closed")
	}
	require.Empty(t, reported, "a set was reported after the client closed")
}
