package etcd

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// TestMain fails the package's tests if any goroutine is left behind.
// IgnoreCurrent ignores those alive before the first test: ants' default
// pool (started when v4 is imported) and whatever etcd's and gRPC's
// packages start at import.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

// testEtcd is a single-member etcd embedded in the test process, on
// loopback ports chosen when it is made, its data in a directory of the
// test's. stop and start restart it on the same ports and data.
type testEtcd struct {
	t                  *testing.T
	dir                string
	clientURL, peerURL url.URL

	mu sync.Mutex
	e  *embed.Etcd
}

// newEtcd starts an etcd for t, stopped when t ends.
func newEtcd(t *testing.T) *testEtcd {
	t.Helper()
	te := &testEtcd{
		t:         t,
		dir:       t.TempDir(),
		clientURL: url.URL{Scheme: "http", Host: freeAddr(t)},
		peerURL:   url.URL{Scheme: "http", Host: freeAddr(t)},
	}
	te.start()
	t.Cleanup(te.stop)
	return te
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// start starts etcd and waits until it serves.
func (te *testEtcd) start() {
	te.t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = te.dir
	cfg.ListenClientUrls = []url.URL{te.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{te.clientURL}
	cfg.ListenPeerUrls = []url.URL{te.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{te.peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// A 50 ms tick and a 500 ms election: the single member is leader
	// within a tick or two of starting (its ticks advance at start), and
	// etcd's minimum lease TTL is 1.5 x 500 ms, rounded up: 1 s.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.UnsafeNoFsync = true
	cfg.EnableGRPCGateway = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	require.NoError(te.t, err)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		te.t.Fatal("etcd did not start within 30 s")
	}
	te.mu.Lock()
	te.e = e
	te.mu.Unlock()
}

// stop stops etcd, if it runs.
func (te *testEtcd) stop() {
	te.mu.Lock()
	e := te.e
	te.e = nil
	te.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// endpoint is the address clients dial.
func (te *testEtcd) endpoint() string { return te.clientURL.Host }

// client returns a client of etcd at endpoint, closed when the test ends.
// Its gRPC reconnection backoff is at most 200 ms, so that it finds a
// restarted etcd at once.
func (te *testEtcd) client(endpoint string) *clientv3.Client {
	te.t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  50 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   200 * time.Millisecond,
			},
			MinConnectTimeout: time.Second,
		})},
	})
	require.NoError(te.t, err)
	te.t.Cleanup(func() { cli.Close() })
	return cli
}

// A cutter forwards TCP connections to an address until cut: cut closes
// every connection and refuses new ones until restore. It stands for a
// network partition between one etcd client and etcd, or a server process
// frozen by a debugger or a GC pause.
type cutter struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// newCutter forwards a loopback address to target until t ends.
func newCutter(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c := &cutter{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	c.wg.Add(1)
	go c.accept()
	t.Cleanup(c.close)
	return c
}

func (c *cutter) addr() string { return c.ln.Addr().String() }

func (c *cutter) accept() {
	defer c.wg.Done()
	for {
		in, err := c.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", c.target)
		if err != nil {
			in.Close()
			continue
		}
		c.mu.Lock()
		if c.cut {
			c.mu.Unlock()
			in.Close()
			out.Close()
			continue
		}
		c.conns[in], c.conns[out] = struct{}{}, struct{}{}
		c.mu.Unlock()
		c.wg.Add(2)
		go c.pipe(in, out)
		go c.pipe(out, in)
	}
}

func (c *cutter) pipe(dst, src net.Conn) {
	defer c.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	c.mu.Lock()
	delete(c.conns, dst)
	delete(c.conns, src)
	c.mu.Unlock()
}

// setCut cuts (true) or restores (false) the connections.
func (c *cutter) setCut(cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = cut
	if cut {
		for nc := range c.conns {
			nc.Close()
		}
	}
}

func (c *cutter) close() {
	c.ln.Close()
	c.setCut(true)
	c.wg.Wait()
}

// itoa is strconv.Itoa, shorter in test tables.
func itoa(i int) string { return strconv.Itoa(i) }

// watched runs a resolver's Watch until the test ends and records what it
// reports.
type watched struct {
	mu      sync.Mutex
	updates [][]cluster.Endpoint
	changed chan struct{} // closed and replaced at each update
	done    chan error    // Watch's result
}

// watch runs r.Watch until t ends; Watch must then return ctx.Err().
func watch(t *testing.T, r cluster.Resolver) *watched {
	t.Helper()
	w := &watched{changed: make(chan struct{}), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		w.done <- r.Watch(ctx, func(eps []cluster.Endpoint) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.updates = append(w.updates, eps)
			close(w.changed)
			w.changed = make(chan struct{})
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-w.done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Watch did not return within 10 s of its ctx ending")
		}
	})
	return w
}

// snapshot returns the updates so far and a channel closed at the next.
func (w *watched) snapshot() ([][]cluster.Endpoint, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.updates), w.changed
}

// waitFor waits until the last update is want (in any order), and fails
// the test if that takes longer than within. It returns how long it took.
func (w *watched) waitFor(t *testing.T, within time.Duration, want ...cluster.Endpoint) time.Duration {
	t.Helper()
	want = endpoints(toSet(want))
	start := time.Now()
	timeout := time.After(within)
	for {
		ups, changed := w.snapshot()
		if len(ups) > 0 && slices.Equal(ups[len(ups)-1], want) {
			return time.Since(start)
		}
		select {
		case <-changed:
		case <-timeout:
			var last []cluster.Endpoint
			if len(ups) > 0 {
				last = ups[len(ups)-1]
			}
			t.Fatalf("the resolver did not report %v within %v; last reported %v (%d updates)", want, within, last, len(ups))
		}
	}
}

func toSet(eps []cluster.Endpoint) map[string]cluster.Endpoint {
	set := make(map[string]cluster.Endpoint, len(eps))
	for _, ep := range eps {
		set[ep.String()] = ep
	}
	return set
}

// Echo is the service of the test servers.
type Echo struct {
	name string
	// hold, if not nil, makes Hold wait until it closes; Hold sends on
	// held first.
	held chan struct{}
	hold chan struct{}
}

// Name returns the server's name.
func (e *Echo) Name(_ struct{}, name *string) error {
	*name = e.name
	return nil
}

// Hold returns once e.hold is closed, or the server closes.
func (e *Echo) Hold(ctx context.Context, _ struct{}, name *string) error {
	e.held <- struct{}{}
	select {
	case <-e.hold:
	case <-ctx.Done():
		return ctx.Err()
	}
	*name = e.name
	return nil
}

// startServer starts a v4 server named name on a loopback port, closed
// when t ends, and returns its endpoint.
func startServer(t *testing.T, name string, opts ...epollbatch.ServerOption) (*epollbatch.Server, *Echo, cluster.Endpoint) {
	t.Helper()
	e := &Echo{name: name, held: make(chan struct{}, 16), hold: make(chan struct{})}
	srv := epollbatch.NewServer(opts...)
	require.NoError(t, srv.RegisterName("Echo", e))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; !errors.Is(err, epollbatch.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return srv, e, cluster.Endpoint{Network: "tcp", Addr: ln.Addr().String()}
}

// ep is a made-up endpoint: registered, never dialled.
func ep(i int) cluster.Endpoint {
	return cluster.Endpoint{Network: "tcp", Addr: "10.0.0." + itoa(i) + ":9000"}
}
