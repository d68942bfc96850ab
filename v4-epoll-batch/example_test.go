package epollbatch_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

type Arith struct{}

type Args struct{ A, B int }

func (Arith) Add(args Args, sum *int) error {
	*sum = args.A + args.B
	return nil
}

func (Arith) Div(ctx context.Context, args Args, q *int) error {
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	*q = args.A / args.B
	return nil
}

// Importing v4 as a library: a server with one service, a client, a call,
// a method's error, and a graceful shutdown.
func Example() {
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

	c, err := epollbatch.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	var sum int
	if err := c.Call(ctx, "Arith.Add", Args{2, 3}, &sum); err != nil {
		panic(err)
	}
	fmt.Println("2 + 3 =", sum)

	var q int
	err = c.Call(ctx, "Arith.Div", Args{1, 0}, &q)
	var se epollbatch.ServerError
	fmt.Println(errors.As(err, &se), err)

	c.Close()
	fmt.Println(srv.Shutdown(ctx), <-served)
	// Output:
	// 2 + 3 = 5
	// true divide by zero
	// <nil> rpc: server closed
}

// Many calls in flight on one connection, with Go; the reactors batch
// them into few writev calls.
func ExampleClient_Go() {
	srv := epollbatch.NewServer(epollbatch.WithReactors(1))
	srv.Register(Arith{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()

	c, _ := epollbatch.Dial("tcp", ln.Addr().String())
	defer c.Close()

	const n = 100
	done := make(chan *epollbatch.Call, n)
	sums := make([]int, n)
	for i := range sums {
		c.Go(context.Background(), "Arith.Add", Args{i, i}, &sums[i], done)
	}
	for range n {
		if call := <-done; call.Error != nil {
			panic(call.Error)
		}
	}
	fmt.Println(sums[0], sums[1], sums[99])
	// Output: 0 2 198
}

// The server's figures: connections, calls in flight, frames written per
// writev, workers.
func ExampleServer_Stats() {
	srv := epollbatch.NewServer(epollbatch.WithWorkers(64), epollbatch.WithMaxInFlight(128))
	srv.Register(Arith{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()

	c, _ := epollbatch.Dial("tcp", ln.Addr().String())
	var sum int
	for range 10 {
		c.Call(context.Background(), "Arith.Add", Args{1, 1}, &sum)
	}
	fmt.Println("connections:", srv.Stats().Conns)

	// A reactor counts a writev after it returns; once Shutdown has closed
	// every connection, the counts are final.
	c.Close()
	srv.Shutdown(context.Background())
	st := srv.Stats()
	fmt.Println("after shutdown:", st.Conns, "connections,", st.InFlight, "in flight,", st.Frames, "replies written")
	// Output:
	// connections: 1
	// after shutdown: 0 connections, 0 in flight, 10 replies written
}
