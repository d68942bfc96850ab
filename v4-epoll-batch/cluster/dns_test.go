package cluster_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// fakeDNS answers DNS's lookups from tables the test changes; a name
// mapped to an error fails.
type fakeDNS struct {
	mu      sync.Mutex
	ips     map[string][]string
	srv     map[string][]*net.SRV
	fail    map[string]error
	lookups int
}

func newFakeDNS() *fakeDNS {
	return &fakeDNS{ips: map[string][]string{}, srv: map[string][]*net.SRV{}, fail: map[string]error{}}
}

var errLookup = errors.New("fake DNS: server misbehaving")

func (f *fakeDNS) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if network != "ip" {
		return nil, errors.New("fake DNS: network " + network)
	}
	if err := f.fail[host]; err != nil {
		return nil, err
	}
	ips, ok := f.ips[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []netip.Addr
	for _, s := range ips {
		out = append(out, netip.MustParseAddr(s))
	}
	return out, nil
}

func (f *fakeDNS) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookups++
	if service != "" || proto != "" {
		return "", nil, errors.New("fake DNS: a service and proto given")
	}
	if err := f.fail[name]; err != nil {
		return "", nil, err
	}
	recs, ok := f.srv[name]
	if !ok {
		return "", nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
	}
	return name, recs, nil
}

func (f *fakeDNS) setIPs(host string, ips ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ips[host] = ips
}

func (f *fakeDNS) setSRV(name string, recs ...*net.SRV) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.srv[name] = recs
}

func (f *fakeDNS) remove(host string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ips, host)
}

func (f *fakeDNS) setFail(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = err
}

func (f *fakeDNS) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

// watch runs r's Watch until the test ends; its sets arrive on the
// channel returned.
func watch(t *testing.T, r cluster.Resolver) <-chan []cluster.Endpoint {
	t.Helper()
	sets := make(chan []cluster.Endpoint, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Watch(ctx, func(eps []cluster.Endpoint) { sets <- eps }) }()
	t.Cleanup(func() {
		cancel()
		require.ErrorIs(t, <-done, context.Canceled)
	})
	return sets
}

func next(t *testing.T, sets <-chan []cluster.Endpoint) []cluster.Endpoint {
	t.Helper()
	select {
	case set := <-sets:
		return set
	case <-time.After(5 * time.Second):
		t.Fatal("no set from the resolver")
		return nil
	}
}

func none(t *testing.T, sets <-chan []cluster.Endpoint, d time.Duration) {
	t.Helper()
	select {
	case set := <-sets:
		t.Fatalf("a set the resolver should not have reported: %v", set)
	case <-time.After(d):
	}
}

func tcp(addrs ...string) []cluster.Endpoint {
	eps := make([]cluster.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = cluster.Endpoint{Network: "tcp", Addr: a}
	}
	return eps
}

// A and AAAA records: the set, a change picked up at the next interval,
// a failed lookup that keeps the set (and reports nothing), and no report
// when nothing changed.
func TestDNSHostPort(t *testing.T) {
	f := newFakeDNS()
	f.setIPs("svc.test", "10.0.0.2", "10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1")
	sets := watch(t, cluster.DNS("svc.test:9000", cluster.WithDNSLookup(f), cluster.WithDNSInterval(time.Millisecond)))
	require.Equal(t, tcp("10.0.0.1:9000", "10.0.0.2:9000", "[2001:db8::1]:9000"), next(t, sets),
		"sorted, an IPv4-mapped address as the IPv4 one, once")

	f.setIPs("svc.test", "10.0.0.2", "10.0.0.3")
	require.Equal(t, tcp("10.0.0.2:9000", "10.0.0.3:9000"), next(t, sets))

	f.setFail("svc.test", errLookup)
	n := f.count()
	require.Eventually(t, func() bool { return f.count() > n+3 }, 5*time.Second, time.Millisecond, "looked up every interval")
	none(t, sets, 20*time.Millisecond)
	f.setFail("svc.test", nil)
	f.remove("svc.test") // not found: kept too
	n = f.count()
	require.Eventually(t, func() bool { return f.count() > n+3 }, 5*time.Second, time.Millisecond)
	none(t, sets, 20*time.Millisecond)

	f.setIPs("svc.test", "10.0.0.3", "10.0.0.2") // the same set: nothing to report
	n = f.count()
	require.Eventually(t, func() bool { return f.count() > n+3 }, 5*time.Second, time.Millisecond)
	none(t, sets, 20*time.Millisecond)
	f.setIPs("svc.test", "10.0.0.4")
	require.Equal(t, tcp("10.0.0.4:9000"), next(t, sets))
}

// SRV records, as a Kubernetes headless service publishes them: each
// target looked up, at the record's port; an IP target as it is; a
// target whose lookup fails keeps its addresses; a failed SRV lookup
// keeps the set; a target no longer listed goes.
func TestDNSSRV(t *testing.T) {
	const name = "_rpc._tcp.svc.ns.svc.cluster.local"
	f := newFakeDNS()
	f.setSRV(name,
		&net.SRV{Target: "pod-a.svc.ns.svc.cluster.local.", Port: 7000},
		&net.SRV{Target: "10.1.1.9", Port: 7001},
		&net.SRV{Target: "pod-a.svc.ns.svc.cluster.local.", Port: 7000}, // listed twice
	)
	f.setIPs("pod-a.svc.ns.svc.cluster.local", "10.1.1.1")
	sets := watch(t, cluster.DNS(name+".", cluster.WithDNSLookup(f), cluster.WithDNSInterval(time.Millisecond)))
	require.Equal(t, tcp("10.1.1.1:7000", "10.1.1.9:7001"), next(t, sets))

	f.setSRV(name,
		&net.SRV{Target: "pod-a.svc.ns.svc.cluster.local.", Port: 7000},
		&net.SRV{Target: "pod-b.svc.ns.svc.cluster.local.", Port: 7000},
	)
	f.setIPs("pod-b.svc.ns.svc.cluster.local", "10.1.1.2")
	require.Equal(t, tcp("10.1.1.1:7000", "10.1.1.2:7000"), next(t, sets))

	f.setFail("pod-a.svc.ns.svc.cluster.local", errLookup) // pod-a keeps 10.1.1.1
	f.setIPs("pod-b.svc.ns.svc.cluster.local", "10.1.1.3")
	require.Equal(t, tcp("10.1.1.1:7000", "10.1.1.3:7000"), next(t, sets))

	f.setFail(name, errLookup)
	n := f.count()
	require.Eventually(t, func() bool { return f.count() > n+3 }, 5*time.Second, time.Millisecond)
	none(t, sets, 20*time.Millisecond)

	f.setFail(name, nil)
	f.setFail("pod-a.svc.ns.svc.cluster.local", nil)
	f.setSRV(name, &net.SRV{Target: "pod-b.svc.ns.svc.cluster.local.", Port: 7000})
	require.Equal(t, tcp("10.1.1.3:7000"), next(t, sets))
	f.setSRV(name) // no record: kept
	n = f.count()
	require.Eventually(t, func() bool { return f.count() > n+3 }, 5*time.Second, time.Millisecond)
	none(t, sets, 20*time.Millisecond)
}

// A first lookup that fails is tried again soon (at most a second later),
// whatever the interval; then the interval holds.
func TestDNSFirstLookupRetried(t *testing.T) {
	f := newFakeDNS()
	f.setFail("svc.test", errLookup)
	sets := watch(t, cluster.DNS("svc.test:1", cluster.WithDNSLookup(f), cluster.WithDNSInterval(time.Hour)))
	require.Eventually(t, func() bool { return f.count() >= 1 }, 5*time.Second, time.Millisecond)
	f.setFail("svc.test", nil)
	f.setIPs("svc.test", "10.0.0.1")
	start := time.Now()
	require.Equal(t, tcp("10.0.0.1:1"), next(t, sets))
	require.Less(t, time.Since(start), 2*time.Second)
	f.setIPs("svc.test", "10.0.0.2")
	none(t, sets, 50*time.Millisecond) // the next lookup is an hour away
}

// Targets DNS cannot use end Watch at once, and Dial with ErrNoEndpoints.
func TestDNSBadTargets(t *testing.T) {
	for _, target := range []string{"", ".", "host:", "host:x", "host:70000", ":80"} {
		err := cluster.DNS(target, cluster.WithDNSLookup(newFakeDNS())).Watch(context.Background(), func([]cluster.Endpoint) {
			t.Errorf("%q: a set", target)
		})
		require.Error(t, err, "%q", target)
		_, err = cluster.Dial(cluster.DNS(target))
		require.ErrorIs(t, err, cluster.ErrNoEndpoints, "%q", target)
	}
	// An IP address needs no lookup.
	f := newFakeDNS()
	sets := watch(t, cluster.DNS("[::1]:80", cluster.WithDNSLookup(f)))
	require.Equal(t, tcp("[::1]:80"), next(t, sets))
	require.Zero(t, f.count())
}

// The cluster client over DNS (SRV records naming real servers): calls go
// to the servers listed; when the records change, to the new ones, and
// the old one is drained and closed.
func TestDNSWithClient(t *testing.T) {
	const name = "_rpc._tcp.echo.test"
	a, b := startServer(t, "", nil), startServer(t, "", nil)
	port := func(s *testServer) uint16 {
		_, p, _ := net.SplitHostPort(s.addr)
		n, _ := strconv.Atoi(p)
		return uint16(n)
	}
	f := newFakeDNS()
	f.setSRV(name, &net.SRV{Target: "127.0.0.1", Port: port(a)})
	cl, err := cluster.Dial(cluster.DNS(name, cluster.WithDNSLookup(f), cluster.WithDNSInterval(5*time.Millisecond)))
	require.NoError(t, err)
	defer cl.Close()
	ctx := testCtx(t, 10*time.Second)
	for range 5 {
		require.NoError(t, echo(ctx, cl, "a"))
	}
	require.EqualValues(t, 5, a.svc.calls.Load())

	f.setSRV(name, &net.SRV{Target: "127.0.0.1", Port: port(b)})
	require.Eventually(t, func() bool {
		st := cl.Stats()
		return len(st) == 1 && st[0].Endpoint == b.ep && st[0].State == cluster.StateUp
	}, 5*time.Second, time.Millisecond)
	for range 5 {
		require.NoError(t, echo(ctx, cl, "b"))
	}
	require.EqualValues(t, 5, a.svc.calls.Load())
	require.EqualValues(t, 5, b.svc.calls.Load())
}
