package etcd

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// Servers join (RegisterServer) and leave (Shutdown, which withdraws them
// from etcd first and holds for WithShutdownDelay) while 64 goroutines
// call through a cluster client that resolves them in etcd; two servers
// or more are up throughout. No call fails, none is answered by a server
// whose Shutdown had returned before the call began, and every server
// that joined answers calls. Plain calls, not idempotent ones: the client may not send any
// again, so none may reach a server that has stopped reading.
func TestClusterChurn(t *testing.T) {
	for _, b := range []struct {
		name     string
		balancer func() cluster.Balancer
	}{{"RoundRobin", cluster.RoundRobin}, {"P2C", cluster.P2C}} {
		t.Run(b.name, func(t *testing.T) { testClusterChurn(t, b.balancer()) })
	}
}

func testClusterChurn(t *testing.T, balancer cluster.Balancer) {
	te := newEtcd(t)
	cli := te.client(te.endpoint())
	const prefix = "/churn"
	opts := []Option{WithTTL(2 * time.Second), WithShutdownDelay(500 * time.Millisecond)}

	type member struct {
		name string
		srv  *epollbatch.Server
		gone atomic.Int64 // when its Shutdown returned, in Unix ns; 0 before
	}
	var (
		mu      sync.Mutex
		members = make(map[string]*member)
		served  = make(map[string]int)
	)
	join := func(name string) *member {
		srv, _, sep := startServer(t, name)
		_, err := RegisterServer(context.Background(), cli, prefix, srv, sep, opts...)
		require.NoError(t, err)
		m := &member{name: name, srv: srv}
		mu.Lock()
		members[name] = m
		mu.Unlock()
		return m
	}
	leave := func(m *member) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, m.srv.Shutdown(ctx))
		m.gone.Store(time.Now().UnixNano())
	}

	up := []*member{join("s0"), join("s1"), join("s2")}
	c, err := cluster.Dial(NewResolver(cli, prefix), cluster.WithBalancer(balancer))
	require.NoError(t, err)
	defer c.Close()

	var (
		calls, failed atomic.Int64
		errMu         sync.Mutex
		firstErr      error
		stop          = make(chan struct{})
		wg            sync.WaitGroup
	)
	fail := func(err error) {
		failed.Add(1)
		errMu.Lock()
		defer errMu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	for range 64 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var name string
				started := time.Now().UnixNano()
				err := c.Call(ctx, "Echo.Name", struct{}{}, &name)
				cancel()
				calls.Add(1)
				if err != nil {
					fail(err)
					continue
				}
				mu.Lock()
				m := members[name]
				served[name]++
				mu.Unlock()
				switch {
				case m == nil:
					fail(fmt.Errorf("answered by %q, not a server of the test", name))
				case m.gone.Load() != 0 && m.gone.Load() < started:
					fail(fmt.Errorf("answered by %q, shut down before the call began", name))
				}
			}
		})
	}

	// Until each of the first three has answered: the client resolved them.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return served["s0"] > 0 && served["s1"] > 0 && served["s2"] > 0
	}, 10*time.Second, 10*time.Millisecond)

	for i := 3; i < 7; i++ {
		up = append(up, join("s"+itoa(i)))
		time.Sleep(300 * time.Millisecond)
		leave(up[0])
		up = up[1:]
		time.Sleep(200 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	t.Logf("%d calls, %d failed; answered by each: %v", calls.Load(), failed.Load(), served)
	if firstErr != nil {
		t.Fatalf("%d of %d calls failed, the first with: %v", failed.Load(), calls.Load(), firstErr)
	}
	for i := range 7 {
		require.NotZero(t, served["s"+itoa(i)], "s%d answered no call", i)
	}
}
