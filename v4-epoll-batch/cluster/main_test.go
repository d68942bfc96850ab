package cluster_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// ants/v2, which v4's servers run their methods on, starts its
// package-level default pool (two goroutines) when it is imported: the one
// thing accepted as started at import time. IgnoreCurrent ignores exactly
// the goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

// Svc is the service every test server publishes, as "Svc".
type Svc struct {
	name  string
	calls atomic.Int64  // Echo calls that began
	delay time.Duration // each Echo sleeps this long
	hold  chan struct{} // if set, Echo waits for it (or its ctx)
	stuck chan struct{} // if set, Echo waits for it, whatever its ctx says
}

// Echo answers with its arguments.
func (s *Svc) Echo(ctx context.Context, args []byte, reply *[]byte) error {
	s.calls.Add(1)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	if s.stuck != nil {
		<-s.stuck
	}
	if s.hold != nil {
		select {
		case <-s.hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	*reply = append((*reply)[:0], args...)
	return nil
}

// Who answers with the server's address.
func (s *Svc) Who(_ int, reply *string) error {
	s.calls.Add(1)
	*reply = s.name
	return nil
}

// testServer is a v4 server on loopback, closed at the test's end.
type testServer struct {
	srv    *epollbatch.Server
	svc    *Svc
	addr   string
	ep     cluster.Endpoint
	served chan error
	once   sync.Once
}

// startServer serves a Svc on addr ("" for a free port of 127.0.0.1).
func startServer(t *testing.T, addr string, svc *Svc, opts ...epollbatch.ServerOption) *testServer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	if svc == nil {
		svc = &Svc{}
	}
	svc.name = ln.Addr().String()
	srv := epollbatch.NewServer(opts...)
	require.NoError(t, srv.RegisterName("Svc", svc))
	ts := &testServer{srv: srv, svc: svc, addr: svc.name, ep: cluster.Endpoint{Network: "tcp", Addr: svc.name}, served: make(chan error, 1)}
	go func() { ts.served <- srv.Serve(ln) }()
	t.Cleanup(ts.close)
	return ts
}

// close closes the server now and waits for Serve to return.
func (ts *testServer) close() {
	ts.once.Do(func() {
		ts.srv.Close()
		<-ts.served
	})
}

// freeAddr returns an address of 127.0.0.1 where nothing listens: dials
// to it are refused.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// driven is a Resolver the test drives: set reports a set and returns
// once the client has taken it.
type driven struct {
	updates chan []cluster.Endpoint
	taken   chan struct{}
}

func newDriven() *driven {
	return &driven{updates: make(chan []cluster.Endpoint), taken: make(chan struct{})}
}

func (d *driven) Watch(ctx context.Context, update func([]cluster.Endpoint)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case set := <-d.updates:
			update(set)
			d.taken <- struct{}{}
		}
	}
}

func (d *driven) set(t *testing.T, eps ...cluster.Endpoint) {
	t.Helper()
	select {
	case d.updates <- eps:
	case <-time.After(5 * time.Second):
		t.Fatal("the client does not watch the resolver")
	}
	<-d.taken
}

// dialDriven dials a client over d, reporting eps first (Dial waits for
// a first set).
func dialDriven(t *testing.T, d *driven, eps []cluster.Endpoint, opts ...cluster.Option) *cluster.Client {
	t.Helper()
	type dialed struct {
		c   *cluster.Client
		err error
	}
	ch := make(chan dialed, 1)
	go func() {
		c, err := cluster.Dial(d, opts...)
		ch <- dialed{c, err}
	}()
	d.set(t, eps...)
	r := <-ch
	require.NoError(t, r.err)
	t.Cleanup(func() { r.c.Close() })
	return r.c
}

// dial dials a client over a Static list, closed at the test's end.
func dial(t *testing.T, eps []cluster.Endpoint, opts ...cluster.Option) *cluster.Client {
	t.Helper()
	c, err := cluster.Dial(cluster.Static(eps), opts...)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// stats returns the client's figures of ep; ok is false if it has none.
func stats(c *cluster.Client, ep cluster.Endpoint) (cluster.EndpointStats, bool) {
	for _, st := range c.Stats() {
		if st.Endpoint == ep {
			return st, true
		}
	}
	return cluster.EndpointStats{}, false
}

// waitState waits until ep is in state want.
func waitState(t *testing.T, c *cluster.Client, ep cluster.Endpoint, want cluster.State) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, ok := stats(c, ep)
		return ok && st.State == want
	}, 5*time.Second, time.Millisecond, "%s never %s", ep, want)
}

// waitUp waits until every server is up.
func waitUp(t *testing.T, c *cluster.Client, servers ...*testServer) {
	t.Helper()
	for _, s := range servers {
		waitState(t, c, s.ep, cluster.StateUp)
	}
}

func endpoints(servers ...*testServer) []cluster.Endpoint {
	eps := make([]cluster.Endpoint, len(servers))
	for i, s := range servers {
		eps[i] = s.ep
	}
	return eps
}

// echo makes one Echo call and checks its reply.
func echo(ctx context.Context, c *cluster.Client, msg string) error {
	var reply []byte
	if err := c.Call(ctx, "Svc.Echo", []byte(msg), &reply); err != nil {
		return err
	}
	if string(reply) != msg {
		return errors.New("wrong reply " + string(reply) + " to " + msg)
	}
	return nil
}

// testCtx is a ctx for one test's calls.
func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
