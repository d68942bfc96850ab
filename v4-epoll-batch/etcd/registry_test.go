package etcd

import (
	"context"
	"encoding/json"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// A server registers, a resolver reports it, and a call to the endpoint
// it reports reaches that server. The key and its value have the
// documented form, and the key is held by a lease.
func TestRegisterResolveCall(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	srv, _, sep := startServer(t, "one")

	reg, err := RegisterServer(context.Background(), cli, "/rpcsteps/echo/", srv, sep)
	require.NoError(t, err)
	require.Equal(t, "/rpcsteps/echo/tcp/"+sep.Addr, reg.Key())

	resp, err := cli.Get(context.Background(), reg.Key())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.JSONEq(t, `{"network":"tcp","addr":"`+sep.Addr+`"}`, string(resp.Kvs[0].Value))
	require.NotZero(t, resp.Kvs[0].Lease, "the key is not held by a lease")
	require.Equal(t, DefaultTTL, reg.TTL())

	w := watch(t, NewResolver(cli, "/rpcsteps/echo"))
	w.waitFor(t, 5*time.Second, sep)
	ups, _ := w.snapshot()

	c, err := epollbatch.Dial(ups[0][0].Network, ups[0][0].Addr)
	require.NoError(t, err)
	defer c.Close()
	var name string
	require.NoError(t, c.Call(context.Background(), "Echo.Name", struct{}{}, &name))
	require.Equal(t, "one", name)
}

// The TTL's boundaries: 0 is the default; etcd counts whole seconds,
// rounded up, and raises a TTL to its minimum (1 s for the test etcd);
// a negative TTL, one too long for etcd and an endpoint without an
// address fail, and leave nothing in etcd.
func TestRegisterTTL(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		want time.Duration // 0: Register fails
	}{
		{"zero is the default", 0, DefaultTTL},
		{"1ns is etcd's minimum", time.Nanosecond, time.Second},
		{"1s", time.Second, time.Second},
		{"1.5s rounds up", 1500 * time.Millisecond, 2 * time.Second},
		{"an hour", time.Hour, time.Hour},
		{"etcd's maximum", 9_000_000_000 * time.Second, 9_000_000_000 * time.Second},
		{"beyond etcd's maximum", math.MaxInt64, 0},
		{"negative", -time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg, err := Register(context.Background(), cli, "/ttl", ep(1), WithTTL(tc.ttl))
			if tc.want == 0 {
				require.Error(t, err)
				require.Nil(t, reg)
			} else {
				require.NoError(t, err)
				require.Equal(t, tc.want, reg.TTL())
				lease, err := cli.TimeToLive(context.Background(), reg.leaseID())
				require.NoError(t, err)
				require.Equal(t, int64(tc.want/time.Second), lease.GrantedTTL)
				require.NoError(t, reg.Close())
			}
			resp, err := cli.Get(context.Background(), "/ttl/", clientv3.WithPrefix())
			require.NoError(t, err)
			require.Empty(t, resp.Kvs, "a key is left in etcd")
		})
	}
	_, err := Register(context.Background(), cli, "/ttl", cluster.Endpoint{Network: "tcp"})
	require.Error(t, err)
	_, err = Register(context.Background(), cli, "/ttl", cluster.Endpoint{Addr: "10.0.0.1:1"})
	require.Error(t, err)
}

// Register fails, within its ctx, when etcd does not answer.
func TestRegisterEtcdDown(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	te.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	reg, err := Register(ctx, cli, "/down", ep(1))
	require.Error(t, err)
	require.Nil(t, reg)
	require.Less(t, time.Since(start), 3*time.Second)
}

// Close withdraws the key at once, not after a TTL; it is idempotent and
// safe from many goroutines; and it leaves alone a key that a successor
// at the same address has put since under its own lease.
func TestCloseDeregisters(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	w := watch(t, NewResolver(cli, "/close"))

	a, err := Register(context.Background(), cli, "/close", ep(1), WithTTL(time.Minute))
	require.NoError(t, err)
	b, err := Register(context.Background(), cli, "/close", ep(2), WithTTL(time.Minute))
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, ep(1), ep(2))

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { require.NoError(t, a.Close()) })
	}
	wg.Wait()
	require.NoError(t, a.Close())
	w.waitFor(t, 5*time.Second, ep(2)) // within seconds, where the TTL is a minute

	// A successor puts ep(2)'s key again, under its lease; b's Close must
	// not take it.
	succ, err := Register(context.Background(), cli, "/close", ep(2), WithTTL(time.Minute))
	require.NoError(t, err)
	require.NoError(t, b.Close())
	resp, err := cli.Get(context.Background(), succ.Key())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1, "closing a registration deleted its successor's key")
	require.Equal(t, int64(succ.leaseID()), resp.Kvs[0].Lease)
	require.NoError(t, succ.Close())
	w.waitFor(t, 5*time.Second)
}

// A registration whose lease is revoked behind its back (an operator, a
// bug) registers again, with a new lease.
func TestLeaseRevokedRegistersAgain(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	other := te.client(te.endpoint())
	w := watch(t, NewResolver(other, "/revoked"))

	const ttl = 3 * time.Second
	reg, err := Register(context.Background(), cli, "/revoked", ep(1), WithTTL(ttl), WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	require.NoError(t, err)
	defer reg.Close()
	w.waitFor(t, 5*time.Second, ep(1))

	old := reg.leaseID()
	_, err = other.Revoke(context.Background(), old)
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second)
	// It notices at its next keepalive, a third of the TTL later.
	w.waitFor(t, ttl/3+5*time.Second, ep(1))
	// The resolver may see the new key before Register's put returns.
	require.Eventually(t, func() bool { return reg.leaseID() != old }, 5*time.Second, 10*time.Millisecond)

	resp, err := other.Get(context.Background(), reg.Key())
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	require.Equal(t, int64(reg.leaseID()), resp.Kvs[0].Lease)
}

// A server cut off from etcd (partitioned, or frozen) stops keeping its
// lease alive: its key disappears from the resolver within about its TTL
// (1 s here), though nothing deregistered it. When it can reach etcd
// again, it finds its lease gone and registers again.
func TestCutRegistrationExpires(t *testing.T) {
	te := newEtcd(t)
	cut := newCutter(t, te.endpoint())
	cli := te.client(cut.addr())
	w := watch(t, NewResolver(te.client(te.endpoint()), "/cut"))

	frozen, err := Register(context.Background(), cli, "/cut", ep(1), WithTTL(time.Second), WithBackoff(50*time.Millisecond, 200*time.Millisecond))
	require.NoError(t, err)
	defer frozen.Close()
	w.waitFor(t, 5*time.Second, ep(1))
	// Longer than the TTL, alive: the keepalives work.
	time.Sleep(1500 * time.Millisecond)
	ups, _ := w.snapshot()
	require.Equal(t, []cluster.Endpoint{ep(1)}, ups[len(ups)-1])

	cut.setCut(true)
	took := w.waitFor(t, 5*time.Second)
	t.Logf("the cut registration disappeared after %v (TTL %v)", took, frozen.TTL())
	// The last keepalive was answered at most a third of the TTL before
	// the cut; etcd checks for expired leases every 500 ms.
	require.Less(t, took, frozen.TTL()+2*time.Second)

	old := frozen.leaseID()
	cut.setCut(false)
	w.waitFor(t, 10*time.Second, ep(1))
	require.Eventually(t, func() bool { return frozen.leaseID() != old }, 5*time.Second, 10*time.Millisecond)
}

// Shutdown withdraws the server's key when it begins, while a call is
// still running on it, before the connections drain; the call still gets
// its reply; and WithShutdownDelay holds the shutdown for that long
// after, the server still reading requests on its connections.
func TestShutdownDeregistersBeforeDrain(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	w := watch(t, NewResolver(cli, "/shutdown"))
	srv, e, sep := startServer(t, "one")
	const delay = 300 * time.Millisecond
	_, err := RegisterServer(context.Background(), cli, "/shutdown", srv, sep, WithShutdownDelay(delay))
	require.NoError(t, err)
	w.waitFor(t, 5*time.Second, sep)

	c, err := epollbatch.Dial(sep.Network, sep.Addr)
	require.NoError(t, err)
	defer c.Close()
	var name string
	call := c.Go(context.Background(), "Echo.Hold", struct{}{}, &name, nil)
	<-e.held

	shutdown := make(chan error, 1)
	start := time.Now()
	go func() { shutdown <- srv.Shutdown(context.Background()) }()
	w.waitFor(t, 5*time.Second) // withdrawn, the call still running
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned %v with a call running", err)
	case <-call.Done:
		t.Fatalf("the call returned %v before it was let go", call.Error)
	default:
	}
	// During the delay, requests on a connection made before are still
	// read and answered.
	var name2 string
	ctx, cancel := context.WithTimeout(context.Background(), delay/2)
	defer cancel()
	require.NoError(t, c.Call(ctx, "Echo.Name", struct{}{}, &name2), "a call during the delay")

	close(e.hold)
	<-call.Done
	require.NoError(t, call.Error)
	require.Equal(t, "one", name)
	require.NoError(t, <-shutdown)
	require.GreaterOrEqual(t, time.Since(start), delay)
}

// RegisterServer's hook, registered before the registration exists, does
// nothing when Register fails; a Shutdown after that returns.
func TestRegisterServerFails(t *testing.T) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	srv, _, sep := startServer(t, "one")
	reg, err := RegisterServer(context.Background(), cli, "/fails", srv, sep, WithTTL(-1))
	require.Error(t, err)
	require.Nil(t, reg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, srv.Shutdown(ctx))
}

// The value's encoding is the documented JSON, and decode takes it back.
func TestRecordEncoding(t *testing.T) {
	v, err := json.Marshal(record{Network: "unix", Addr: "/run/echo.sock"})
	require.NoError(t, err)
	require.Equal(t, `{"network":"unix","addr":"/run/echo.sock"}`, string(v))
	got, ok := decode(v)
	require.True(t, ok)
	require.Equal(t, cluster.Endpoint{Network: "unix", Addr: "/run/echo.sock"}, got)
	for _, bad := range []string{``, `null`, `{}`, `{"network":"tcp"}`, `{"addr":"x"}`, `tcp/10.0.0.1:1`} {
		_, ok := decode([]byte(bad))
		require.False(t, ok, bad)
	}
	require.Equal(t, "/p/tcp/a:1", Key("/p", cluster.Endpoint{Network: "tcp", Addr: "a:1"}))
	require.Equal(t, "/p/tcp/a:1", Key("/p//", cluster.Endpoint{Network: "tcp", Addr: "a:1"}))
	require.Equal(t, int64(2), ttlSeconds(1001*time.Millisecond))
	require.Equal(t, int64(1), ttlSeconds(time.Second))
	require.Equal(t, int64(math.MaxInt64/int64(time.Second))+1, ttlSeconds(math.MaxInt64))
}
