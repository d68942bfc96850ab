package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	pipeline "github.com/rpcsteps/rpcsteps/v3-pipeline"
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

// A server and a client in one program: register a service, serve it, call
// it, and stop.
func Example() {
	srv := pipeline.NewServer()
	if err := srv.Register(Arith{}); err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	c, err := pipeline.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var sum int
	if err := c.Call(ctx, "Arith.Add", Args{2, 3}, &sum); err != nil {
		panic(err)
	}
	fmt.Println("2 + 3 =", sum)

	// A method's error comes back as a ServerError.
	var q int
	err = c.Call(ctx, "Arith.Div", Args{1, 0}, &q)
	var se pipeline.ServerError
	fmt.Println(errors.As(err, &se), err)

	srv.Shutdown(ctx)
	fmt.Println(<-served)
	// Output:
	// 2 + 3 = 5
	// true divide by zero
	// rpc: server closed
}

// Go starts calls without waiting; their results arrive on a channel.
func ExampleClient_Go() {
	srv := pipeline.NewServer()
	srv.Register(Arith{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()

	c, _ := pipeline.Dial("tcp", ln.Addr().String())
	defer c.Close()

	done := make(chan *pipeline.Call, 3)
	sums := make([]int, 3)
	for i := range sums {
		c.Go(context.Background(), "Arith.Add", Args{i, 10}, &sums[i], done)
	}
	for range sums {
		if call := <-done; call.Error != nil {
			panic(call.Error)
		}
	}
	fmt.Println(sums)
	// Output: [10 11 12]
}

// v3 connects in Dial: its one connection lives as long as the client, so
// a server that is not there is Dial's error.
func ExampleDial() {
	_, err := pipeline.Dial("tcp", "127.0.0.1:1") // nothing listens there
	fmt.Println(err != nil)
	// Output: true
}
