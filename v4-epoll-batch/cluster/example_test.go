package cluster_test

import (
	"context"
	"fmt"
	"net"
	"time"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

type Arith struct{}

type Args struct{ A, B int }

func (Arith) Add(args Args, sum *int) error {
	*sum = args.A + args.B
	return nil
}

// serveArith starts a v4 server of Arith on loopback; stop closes it.
func serveArith() (ep cluster.Endpoint, stop func()) {
	srv := epollbatch.NewServer()
	if err := srv.Register(Arith{}); err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return cluster.Endpoint{Network: "tcp", Addr: ln.Addr().String()}, func() {
		srv.Close()
		<-served
	}
}

// One client over two servers, listed once and for all: calls go to
// either, in turn.
func ExampleDial() {
	ep1, stop1 := serveArith()
	defer stop1()
	ep2, stop2 := serveArith()
	defer stop2()

	c, err := cluster.Dial(cluster.Static{ep1, ep2})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	var sums []int
	for i := range 4 {
		var sum int
		if err := c.Call(ctx, "Arith.Add", Args{i, i}, &sum); err != nil {
			panic(err)
		}
		sums = append(sums, sum)
	}
	fmt.Println(sums)
	var calls int64
	for _, st := range c.Stats() {
		calls += st.Calls
	}
	fmt.Println(len(c.Stats()), "endpoints,", calls, "calls")
	// Output:
	// [0 2 4 6]
	// 2 endpoints, 4 calls
}

// The power of two choices over three servers, one of which dies after
// the client connected. The calls are marked idempotent: one that was
// sent to the dead server before the client knew is sent again to
// another; one that never left for it would be in any case. The dead
// server is left out of the choice and dialed again after a pause.
func ExampleP2C() {
	ep1, stop1 := serveArith()
	defer stop1()
	ep2, stop2 := serveArith()
	defer stop2()
	ep3, stop3 := serveArith()

	c, err := cluster.Dial(cluster.Static{ep1, ep2, ep3}, cluster.WithBalancer(cluster.P2C()))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	for up := 0; up < 3; { // the three are up
		time.Sleep(time.Millisecond)
		up = 0
		for _, st := range c.Stats() {
			if st.State == cluster.StateUp {
				up++
			}
		}
	}
	stop3() // the third server dies

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = cluster.Idempotent(ctx)
	ok := 0
	for range 10 {
		var sum int
		if err := c.Call(ctx, "Arith.Add", Args{1, 2}, &sum); err == nil && sum == 3 {
			ok++
		}
	}
	fmt.Println(ok, "of 10 calls succeeded")
	// Output:
	// 10 of 10 calls succeeded
}
