// Command connscale measures what idle connections cost a server: its
// goroutines and memory (heap and goroutine stacks) per connection, for
// each implementation, at several connection counts.
//
//	go run ./benchcmp/cmd/connscale -impl v3,v4 -conns 100,1000,10000
//
// The server runs in this process. The clients are raw TCP connections,
// which start no goroutine: each makes one Echo call, to be sure it is
// served, then stays open and idle. The same clients are first measured
// against a "null" server that only accepts and holds its connections;
// what an implementation costs above that is its own. The output is a
// table, and with -out the same figures as benchmark lines
// (BenchmarkConnScale/impl=v4/conns=1000 ... goroutines/conn bytes/conn)
// for benchstat or the plots.
//
// Both ends of every connection are in this process: n connections need 2n
// file descriptors. Go raises the soft limit to the hard one at start; with
// a hard limit of 20,000 (this machine's), 9,000 connections is the most.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/rpcsteps/rpcsteps/benchcmp"
	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

func main() {
	impls := flag.String("impl", "v3,v4", "implementations, comma-separated")
	counts := flag.String("conns", "100,1000,10000", "connection counts, comma-separated")
	out := flag.String("out", "", "also write benchmark lines to this file")
	flag.Parse()
	if err := run(os.Stdout, *impls, *counts, *out); err != nil {
		fmt.Fprintln(os.Stderr, "connscale:", err)
		os.Exit(1)
	}
}

// Cost is what one server spent on n idle connections, above the null server.
type Cost struct {
	Impl              string
	Conns             int
	GoroutinesPerConn float64
	BytesPerConn      float64
}

func run(w io.Writer, impls, counts, out string) error {
	ns, err := parseInts(counts)
	if err != nil {
		return err
	}
	var costs []Cost
	for _, name := range strings.Split(impls, ",") {
		im, err := benchcmp.Lookup(strings.TrimSpace(name))
		if err != nil {
			return err
		}
		for _, n := range ns {
			c, err := measure(im, n)
			if err != nil {
				return fmt.Errorf("%s, %d connections: %w", im.Name, n, err)
			}
			fmt.Fprintf(w, "%-6s %6d connections: %6.2f goroutines and %8.0f bytes per connection (above a null server)\n",
				c.Impl, c.Conns, c.GoroutinesPerConn, c.BytesPerConn)
			costs = append(costs, c)
		}
	}
	if out == "" {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "goos: %s\ngoarch: %s\npkg: github.com/rpcsteps/rpcsteps/benchcmp/cmd/connscale\n", runtime.GOOS, runtime.GOARCH)
	for _, c := range costs {
		// The -N suffix is GOMAXPROCS, as go test writes it.
		fmt.Fprintf(&b, "BenchmarkConnScale/impl=%s/conns=%d-%d 1 %.2f goroutines/conn %.0f bytes/conn\n",
			c.Impl, c.Conns, runtime.GOMAXPROCS(0), c.GoroutinesPerConn, c.BytesPerConn)
	}
	return os.WriteFile(out, []byte(b.String()), 0o644)
}

func parseInts(s string) ([]int, error) {
	var ns []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad connection count %q", f)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

// snapshot is the process's goroutines and memory after a GC.
type snapshot struct {
	goroutines int
	bytes      uint64
}

func take() snapshot {
	var s snapshot
	for range 20 { // let goroutines that are ending end
		runtime.GC()
		n := runtime.NumGoroutine()
		time.Sleep(10 * time.Millisecond)
		if runtime.NumGoroutine() == n {
			break
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.goroutines = runtime.NumGoroutine()
	s.bytes = ms.HeapInuse + ms.StackInuse
	return s
}

// measure: the cost of n idle connections to im's server, minus the cost
// of the same clients on the null server.
func measure(im benchcmp.Impl, n int) (Cost, error) {
	null, err := cost(n, func(ln net.Listener) (func(), error) { return holdServer(ln), nil }, false)
	if err != nil {
		return Cost{}, fmt.Errorf("null server: %w", err)
	}
	full, err := cost(n, im.Serve, true)
	if err != nil {
		return Cost{}, err
	}
	return Cost{
		Impl:              im.Name,
		Conns:             n,
		GoroutinesPerConn: (full.g - null.g) / float64(n),
		BytesPerConn:      (full.b - null.b) / float64(n),
	}, nil
}

type delta struct{ g, b float64 }

// cost opens n clients to a server started by serve and returns what the
// process grew by.
func cost(n int, serve func(net.Listener) (func(), error), reply bool) (delta, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return delta{}, err
	}
	stop, err := serve(ln)
	if err != nil {
		return delta{}, err
	}
	defer stop()
	warm, err := dialAndCall(ln.Addr().String(), reply) // starts what a first connection starts
	if err != nil {
		return delta{}, err
	}
	warm.Close()
	time.Sleep(50 * time.Millisecond)
	before := take()
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := dialAndCall(ln.Addr().String(), reply)
		if err != nil {
			return delta{}, err
		}
		conns = append(conns, c)
	}
	after := take()
	return delta{float64(after.goroutines - before.goroutines), float64(after.bytes) - float64(before.bytes)}, nil
}

// request is one Echo call's frame; a null server does not answer it.
var request = func() []byte {
	b, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Raw, "Echo.Echo", []byte("are you there"))
	if err != nil {
		panic(err)
	}
	return b
}()

// dialAndCall opens a raw connection and makes one call on it, so that
// the server has fully set the connection up. With reply false (the null
// server) it only writes the request.
func dialAndCall(addr string, reply bool) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(request); err != nil {
		c.Close()
		return nil, err
	}
	if !reply {
		return c, nil
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f protocol.Frame
	if _, err := protocol.ReadFrame(bufio.NewReader(c), 0, &f, nil); err != nil {
		c.Close()
		return nil, err
	}
	if f.Seq != 1 || f.Flags&protocol.FlagError != 0 {
		c.Close()
		return nil, errors.New("the Echo call failed")
	}
	c.SetReadDeadline(time.Time{})
	return c, nil
}

// holdServer accepts connections and holds them, reading nothing: the
// baseline cost of a connection to the process.
func holdServer(ln net.Listener) func() {
	held := make(chan net.Conn, 1<<16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	return func() {
		ln.Close()
		<-done
		close(held)
		for c := range held {
			c.Close()
		}
	}
}
