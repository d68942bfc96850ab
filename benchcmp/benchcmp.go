// Package benchcmp measures every rpcsteps version and Go's net/rpc with one
// workload, so that benchstat can set them side by side:
//
//	go test -run '^$' -bench . -benchmem -count 6 ./benchcmp > new.txt
//	go tool benchstat -col /impl new.txt
//
// Each implementation serves the same Echo service on loopback TCP and is
// driven by the same loop (Drive): a number of callers share one client,
// every reply is checked against its request, and each call's latency is
// recorded. Here client and server share one process, which is where
// allocations per call are counted. `make bench-all` runs the grid with
// each server in a process of its own (benchcmp/cross, which also has
// Raw, the transport's limit), then these benchmarks for allocations.
//
// The package also holds what the cross-process measurements share, with
// cmd/loadgen: the server child (ServeChild, StartServer, CPUMeter), the
// time-based run (Load) and Raw.
//
// The payload is a []byte. The rpcsteps versions carry it with codec.Raw,
// so that the grid measures how bytes move, which is what the versions
// change; net/rpc carries it with its own gob codec, which it cannot swap,
// and whose per-connection stream describes []byte once and then costs a
// few bytes and allocations per call. Read the net/rpc column as "the
// standard library, as people use it", not as a like-for-like codec.
package benchcmp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Client is what the benchmark needs of a client: the contract's Call and
// Close.
type Client interface {
	Call(ctx context.Context, serviceMethod string, args, reply any) error
	Close() error
}

// Batcher is a Client that can say how many frames its writer sent per
// write system call, on average: the batching of v3 and v4.
type Batcher interface {
	FramesPerWrite() float64
}

// Impl is one implementation under test.
type Impl struct {
	// Name is the value of the impl= key in benchmark names, e.g. "netrpc".
	Name string
	// Serve serves the Echo service on ln until stop is called; stop
	// returns once every goroutine it started has ended.
	Serve func(ln net.Listener) (stop func(), err error)
	// Dial returns a client of the server at addr (TCP).
	Dial func(addr string) (Client, error)
	// EchoOnly is set for an implementation that serves Echo.Echo and
	// not Echo.Sleep (Raw).
	EchoOnly bool
}

// Echo is the service every implementation serves.
type Echo struct{}

// Echo replies with its arguments.
func (Echo) Echo(args []byte, reply *[]byte) error {
	*reply = append((*reply)[:0], args...)
	return nil
}

// ManyClients is the many-connections workload: that many clients, each
// with one caller, all on one server.
const ManyClients = 1000

// SleepTime is how long Echo.Sleep works before it answers.
const SleepTime = time.Millisecond

// Sleep replies with its arguments after SleepTime, as a method that does
// real work (or waits on a database) would.
func (Echo) Sleep(args []byte, reply *[]byte) error {
	time.Sleep(SleepTime)
	*reply = append((*reply)[:0], args...)
	return nil
}

// Impls returns the implementations under test, in tutorial order.
func Impls() []Impl {
	return append([]Impl{netrpcImpl(), v1Impl(), v2Impl(), v3Impl()}, v4Impls()...)
}

// Lookup returns the implementation named name, in Impls or Extras, or
// Raw.
func Lookup(name string) (Impl, error) {
	for _, im := range append(append(Impls(), Extras()...), Raw()) {
		if im.Name == name {
			return im, nil
		}
	}
	return Impl{}, fmt.Errorf("benchcmp: no implementation %q", name)
}

// Result is what Drive measured.
type Result struct {
	Calls   int64
	Elapsed time.Duration
	// Latencies of each call, sorted ascending.
	Latencies []time.Duration
}

// CallsPerSec is the throughput of the run.
func (r *Result) CallsPerSec() float64 { return float64(r.Calls) / r.Elapsed.Seconds() }

// Percentile returns the latency below which the fraction p (0 to 1) of the
// calls completed. It is a measured value, not total time divided by calls.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(p * float64(len(r.Latencies)-1))
	return r.Latencies[i]
}

// Drive makes calls calls of method (Echo.Echo or Echo.Sleep) with
// payloads of size bytes through c, from callers goroutines at once, and
// checks every reply against its request.
// It allocates what it needs before it starts the clock, so that the
// allocations counted during a run are the implementation's own.
func Drive(ctx context.Context, c Client, method string, callers, size int, calls int64, start func()) (*Result, error) {
	return DriveClients(ctx, []Client{c}, method, callers, size, calls, start)
}

// DriveClients is Drive with the callers spread over several clients:
// caller i uses clients[i % len(clients)]. With as many clients as callers,
// each caller has a client, and so a connection, of its own.
func DriveClients(ctx context.Context, clients []Client, method string, callers, size int, calls int64, start func()) (*Result, error) {
	if size < 8 {
		return nil, errors.New("benchcmp: payloads are at least 8 bytes (they carry the call number)")
	}
	lat := make([]time.Duration, calls)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) { errOnce.Do(func() { firstErr = err }) }

	type caller struct {
		args  any // the payload, boxed once: Call takes an any
		data  []byte
		reply []byte
	}
	cs := make([]caller, callers)
	for i := range cs {
		cs[i].data = make([]byte, size)
		for j := range cs[i].data {
			cs[i].data[j] = byte(i + j)
		}
		cs[i].args = cs[i].data
		cs[i].reply = make([]byte, 0, size)
	}

	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := range cs {
		cl := &cs[i]
		c := clients[i%len(clients)]
		wg.Go(func() {
			<-ready
			for {
				n := next.Add(1) - 1
				if n >= calls || ctx.Err() != nil {
					return
				}
				binary.LittleEndian.PutUint64(cl.data, uint64(n))
				t0 := time.Now()
				err := c.Call(ctx, method, cl.args, &cl.reply)
				lat[n] = time.Since(t0)
				if err != nil {
					fail(fmt.Errorf("call %d: %w", n, err))
					return
				}
				if !bytes.Equal(cl.reply, cl.data) {
					fail(fmt.Errorf("call %d: reply of %d bytes does not match its request", n, len(cl.reply)))
					return
				}
			}
		})
	}
	if start != nil {
		start()
	}
	t0 := time.Now()
	close(ready)
	wg.Wait()
	elapsed := time.Since(t0)
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	slices.Sort(lat)
	return &Result{Calls: calls, Elapsed: elapsed, Latencies: lat}, nil
}
