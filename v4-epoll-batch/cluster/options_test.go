package cluster_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// resolverFunc is a Resolver made of its Watch.
type resolverFunc func(ctx context.Context, update func([]cluster.Endpoint)) error

func (f resolverFunc) Watch(ctx context.Context, update func([]cluster.Endpoint)) error {
	return f(ctx, update)
}

// Dial and WithResolveTimeout: a resolver that never answers, or answers
// with nothing, fails Dial with ErrNoEndpoints once the timeout passes;
// one that fails fails it at once, with its error; one that lists and
// returns leaves a working client; 0, negative and huge timeouts work.
func TestDialAndResolveTimeout(t *testing.T) {
	never := resolverFunc(func(ctx context.Context, _ func([]cluster.Endpoint)) error { <-ctx.Done(); return ctx.Err() })
	empty := resolverFunc(func(ctx context.Context, update func([]cluster.Endpoint)) error {
		update(nil)
		update([]cluster.Endpoint{})
		<-ctx.Done()
		return ctx.Err()
	})
	for _, r := range []cluster.Resolver{never, empty} {
		for _, d := range []time.Duration{1, 20 * time.Millisecond} {
			start := time.Now()
			c, err := cluster.Dial(r, cluster.WithResolveTimeout(d))
			require.ErrorIs(t, err, cluster.ErrNoEndpoints)
			require.Nil(t, c)
			require.Less(t, time.Since(start), time.Second)
		}
	}

	boom := errors.New("resolver boom")
	_, err := cluster.Dial(resolverFunc(func(context.Context, func([]cluster.Endpoint)) error { return boom }))
	require.ErrorIs(t, err, cluster.ErrNoEndpoints)
	require.ErrorIs(t, err, boom)
	_, err = cluster.Dial(resolverFunc(func(context.Context, func([]cluster.Endpoint)) error { return nil }))
	require.ErrorIs(t, err, cluster.ErrNoEndpoints)
	_, err = cluster.Dial(nil)
	require.ErrorIs(t, err, cluster.ErrNoEndpoints)

	a := startServer(t, "", nil)
	ctx := testCtx(t, 10*time.Second)
	once := resolverFunc(func(_ context.Context, update func([]cluster.Endpoint)) error {
		update([]cluster.Endpoint{{Addr: a.addr}}) // no Network: tcp
		return errors.New("stopped")
	})
	for _, r := range []cluster.Resolver{cluster.Static{a.ep}, once} {
		for _, d := range []time.Duration{0, -1, math.MinInt64, math.MaxInt64} {
			c, err := cluster.Dial(r, cluster.WithResolveTimeout(d))
			require.NoError(t, err, "WithResolveTimeout(%d)", d)
			require.NoError(t, echo(ctx, c, "x"))
			require.Equal(t, a.ep, c.Stats()[0].Endpoint)
			require.NoError(t, c.Close())
		}
	}
}

// WithBackoff at its extremes: a refused endpoint with 1 ns pauses is
// dialed again and again and costs nothing but dials, and Close stops it;
// with huge pauses its next dial is far away, with no overflow.
func TestBackoffExtremes(t *testing.T) {
	a := startServer(t, "", nil)
	refused := cluster.Endpoint{Network: "tcp", Addr: freeAddr(t)}
	ctx := testCtx(t, 10*time.Second)
	for _, b := range [][2]time.Duration{{1, 1}, {-1, -1}, {0, 0}, {math.MaxInt64, math.MaxInt64}, {1, math.MaxInt64}} {
		c, err := cluster.Dial(cluster.Static{a.ep, refused}, cluster.WithBackoff(b[0], b[1]))
		require.NoError(t, err)
		waitUp(t, c, a)
		waitState(t, c, refused, cluster.StateBackoff)
		for range 10 {
			require.NoError(t, echo(ctx, c, "x"))
		}
		st, _ := stats(c, refused)
		if b[0] == math.MaxInt64 {
			require.True(t, st.RetryAt.After(time.Now().Add(24*time.Hour)), "RetryAt %v", st.RetryAt)
		}
		require.NoError(t, c.Close())
	}
}

// pickFunc is a Balancer made of its Pick.
type pickFunc func(up []*cluster.Backend) int

func (f pickFunc) Pick(_ context.Context, _ string, up []*cluster.Backend) int { return f(up) }

// A Balancer's index out of range is taken modulo the backends up; the
// Balancer sees the call's ctx and method, and only backends up.
func TestBalancerIndexOutOfRange(t *testing.T) {
	a, b := startServer(t, "", nil), startServer(t, "", nil)
	ctx := testCtx(t, 10*time.Second)
	for _, i := range []int{-1, 2, 3, math.MinInt, math.MaxInt, -7} {
		c := dial(t, endpoints(a, b), cluster.WithBalancer(pickFunc(func(up []*cluster.Backend) int {
			for _, b := range up {
				if b.InFlight() < 0 {
					panic("negative calls in flight")
				}
			}
			return i
		})))
		waitUp(t, c, a, b)
		for range 4 {
			require.NoError(t, echo(ctx, c, "x"))
		}
	}
	require.EqualValues(t, 24, a.svc.calls.Load()+b.svc.calls.Load())

	type key struct{}
	var seen []string
	var mu sync.Mutex
	c := dial(t, endpoints(a), cluster.WithBalancer(cluster.BalancerFunc(func(ctx context.Context, method string, up []*cluster.Backend) int {
		mu.Lock()
		defer mu.Unlock()
		v, _ := ctx.Value(key{}).(string)
		seen = append(seen, v+" "+method+" "+up[0].Endpoint().Addr)
		return 0
	})))
	require.NoError(t, echo(context.WithValue(ctx, key{}, "k"), c, "x"))
	require.Equal(t, []string{"k Svc.Echo " + a.addr}, seen)
}

// Go with a nil done makes one; an unbuffered one panics. WithLogger
// logs; without it the client says nothing (nothing to check but that
// it does not crash). WithClientOptions reach every endpoint's Dial.
func TestGoLoggerClientOptions(t *testing.T) {
	a := startServer(t, "", nil)
	var buf bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var intercepted sync.WaitGroup
	intercepted.Add(1)
	var once sync.Once
	c := dial(t, endpoints(a), cluster.WithLogger(logger), cluster.WithClientOptions(
		epollbatch.WithConns(2),
		epollbatch.WithClientInterceptors(func(ctx context.Context, m string, args, reply any, invoke func(context.Context) error) error {
			once.Do(intercepted.Done)
			return invoke(ctx)
		})))
	ctx := testCtx(t, 10*time.Second)
	var reply []byte
	call := <-c.Go(ctx, "Svc.Echo", []byte("go"), &reply, nil).Done
	require.NoError(t, call.Error)
	require.Equal(t, "go", string(reply))
	require.Equal(t, "Svc.Echo", call.ServiceMethod)
	intercepted.Wait()
	require.Panics(t, func() { c.Go(ctx, "Svc.Echo", []byte("x"), &reply, make(chan *epollbatch.Call)) })
	done := make(chan *epollbatch.Call, 1)
	require.True(t, c.Go(ctx, "Svc.Echo", []byte("x"), &reply, done).Done == done, "the done channel given")
	require.NoError(t, (<-done).Error)
	require.NoError(t, c.Notify(ctx, "Svc.Echo", []byte("n")))
	require.Eventually(t, func() bool { return a.svc.calls.Load() == 3 }, 5*time.Second, time.Millisecond)
	mu.Lock()
	require.Contains(t, buf.String(), "cluster: endpoint up")
	mu.Unlock()
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}
