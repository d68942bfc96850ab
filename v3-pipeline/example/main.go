// Command example runs a v3 server and client in one process, shows each
// kind of call, then makes 1,000 calls and counts what they cost in
// connections, and runs many slow calls at once over one connection:
//
//	go run ./v3-pipeline/example
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	pipeline "github.com/rpcsteps/rpcsteps/v3-pipeline"
)

// Args are the operands of Arith's methods.
type Args struct{ A, B int }

// Arith is the demo service.
type Arith struct{ notified chan string }

// Add sets sum to A+B.
func (Arith) Add(args Args, sum *int) error {
	*sum = args.A + args.B
	return nil
}

// Div sets q to A/B, or fails.
func (Arith) Div(args Args, q *int) error {
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	*q = args.A / args.B
	return nil
}

// Slow waits for its ctx: the caller's deadline ends it.
func (Arith) Slow(ctx context.Context, _ Args, _ *int) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return nil
	}
}

// Work takes a millisecond, as a method that does real work might.
func (Arith) Work(args Args, sum *int) error {
	time.Sleep(time.Millisecond)
	*sum = args.A + args.B
	return nil
}

// Log records a message; it is called one way, with Notify.
func (a Arith) Log(msg string, _ *struct{}) error {
	a.notified <- msg
	return nil
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func main() {
	log.SetFlags(0)
	if err := run(os.Stdout, 1000); err != nil {
		log.Fatal(err)
	}
}

// run is the demo, writing to w, with the given number of calls at the end.
func run(w io.Writer, calls int) error {
	arith := Arith{notified: make(chan string, 1)}
	srv := pipeline.NewServer()
	if err := srv.Register(arith); err != nil {
		return err
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ln := &countingListener{Listener: inner}
	go srv.Serve(ln)
	defer srv.Close() // on the error paths; Shutdown below is the normal end
	addr := ln.Addr().String()
	fmt.Fprintln(w, "server listening on", addr)

	c, err := pipeline.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx := context.Background()

	var sum int
	if err := c.Call(ctx, "Arith.Add", Args{2, 3}, &sum); err != nil {
		return err
	}
	fmt.Fprintln(w, "Arith.Add(2, 3) =", sum)

	var q int
	err = c.Call(ctx, "Arith.Div", Args{1, 0}, &q)
	var se pipeline.ServerError
	fmt.Fprintf(w, "Arith.Div(1, 0) failed: %v (ServerError: %t)\n", err, errors.As(err, &se))

	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = c.Call(tctx, "Arith.Slow", Args{}, &q)
	cancel()
	fmt.Fprintf(w, "Arith.Slow with a 50ms deadline: %v (DeadlineExceeded: %t)\n", err, errors.Is(err, context.DeadlineExceeded))

	done := make(chan *pipeline.Call, 3)
	sums := make([]int, 3)
	for i := range sums {
		c.Go(ctx, "Arith.Add", Args{i, 10}, &sums[i], done)
	}
	for range sums {
		if call := <-done; call.Error != nil {
			return call.Error
		}
	}
	fmt.Fprintln(w, "three Go calls:", sums)

	if err := c.Notify(ctx, "Arith.Log", "hello, one way"); err != nil {
		return err
	}
	fmt.Fprintf(w, "Notify: the server logged %q\n", <-arith.notified)

	// Chapter 1's wall, measured again: how many TCP connections do the calls take?
	before := ln.n.Load()
	start := time.Now()
	for i := range calls {
		if err := c.Call(ctx, "Arith.Add", Args{i, 1}, &sum); err != nil {
			return err
		}
	}
	elapsed := time.Since(start)
	fmt.Fprintf(w, "%d calls: %d TCP connections accepted\n", calls, ln.n.Load()-before)
	if tw, err := timeWait(addr); err == nil {
		fmt.Fprintf(w, "sockets in TIME_WAIT on the server's port: %d\n", tw)
	} else {
		fmt.Fprintln(w, "sockets in TIME_WAIT: cannot count here:", err)
	}
	fmt.Fprintf(w, "%d calls, one caller, took %v: %.0f calls/s (your numbers will differ)\n",
		calls, elapsed.Round(time.Millisecond), float64(calls)/elapsed.Seconds())
	st := c.Stats()
	fmt.Fprintf(w, "client: %d connection, %d dialed\n", st.Conns, st.Dials)

	// Many calls in flight on one connection: 64 callers, 1 ms of work per
	// call, and the connection is never held by one call: replies come
	// back as they are ready, in any order.
	c1, err := pipeline.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c1.Close()
	callers, each := 64, max(calls/64, 1)
	start = time.Now()
	errs := make(chan error, callers)
	for range callers {
		go func() {
			var sum int
			for range each {
				if err := c1.Call(ctx, "Arith.Work", Args{1, 2}, &sum); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range callers {
		if err := <-errs; err != nil {
			return err
		}
	}
	elapsed = time.Since(start)
	st = c1.Stats()
	fmt.Fprintf(w, "1 ms method, %d callers, 1 connection: %d requests in %d writes\n", callers, st.Frames, st.Flushes)
	fmt.Fprintf(w, "%d calls took %v: %.0f calls/s (your numbers will differ)\n",
		callers*each, elapsed.Round(time.Millisecond), float64(callers*each)/elapsed.Seconds())

	if err := srv.Shutdown(ctx); err != nil {
		return err
	}
	fmt.Fprintln(w, "server shut down")
	return nil
}

// timeWait counts the TCP sockets in TIME_WAIT whose local or remote
// address is addr, from /proc/net/tcp (Linux).
func timeWait(addr string) (int, error) {
	if runtime.GOOS != "linux" {
		return 0, fmt.Errorf("/proc/net/tcp is Linux's")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, err
	}
	var p int
	fmt.Sscan(port, &p)
	hexPort := fmt.Sprintf(":%04X", p)
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st ...; TIME_WAIT is state 06
		fields := strings.Fields(sc.Text())
		if len(fields) > 3 && fields[3] == "06" &&
			(strings.HasSuffix(fields[1], hexPort) || strings.HasSuffix(fields[2], hexPort)) {
			n++
		}
	}
	return n, sc.Err()
}
