// Command example runs a v4 server and, for comparison, a v3 server in one
// process. It holds many idle connections to each and counts the
// goroutines they cost, then makes calls from 64 callers on one v4 client
// and shows how its reactor batches them, and shuts both servers down:
//
//	go run ./v4-epoll-batch/example
//	go run ./v4-epoll-batch/example -conns 2000 -callers 16 -calls 20000
//
// The idle connections are raw TCP connections, as in benchcmp/cmd/connscale:
// each sends one request frame, reads its reply, and then stays open and
// silent, starting no goroutine of its own. Both ends of every connection
// are in this process, so each costs two file descriptors; the number is
// lowered, with a message, when the open-file limit cannot hold them.
// The connections are opened to one server at a time, and closed before
// the next. That part is Linux's: elsewhere v4 has no epoll reactors, and
// serves every connection with its portable engine, two goroutines each,
// as v3 does.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
	pipeline "github.com/rpcsteps/rpcsteps/v3-pipeline"
	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// Echo is the service both servers publish.
type Echo struct{}

// Echo replies with its arguments.
func (Echo) Echo(args []byte, reply *[]byte) error {
	*reply = append((*reply)[:0], args...)
	return nil
}

// config is what the flags set.
type config struct {
	conns   int // idle connections to each server
	callers int // concurrent callers of the v4 client
	calls   int // calls they make, in all
}

func main() {
	log.SetFlags(0)
	var cfg config
	flag.IntVar(&cfg.conns, "conns", 10_000, "idle connections to hold open to each server (Linux only)")
	flag.IntVar(&cfg.callers, "callers", 64, "concurrent callers sharing the v4 client")
	flag.IntVar(&cfg.calls, "calls", 6_400, "calls the v4 client makes, in all")
	flag.Parse()
	if err := run(os.Stdout, cfg); err != nil {
		log.Fatal(err)
	}
}

// server is what the demo needs of either version's server.
type server struct {
	name   string
	addr   string
	conns  func() int    // the server's Stats().Conns
	frames func() int    // the replies it has written
	extra  func() string // more of its Stats, for the idle counts
}

// run is the demo, writing to w.
func run(w io.Writer, cfg config) error {
	if cfg.conns < 1 || cfg.callers < 1 || cfg.calls < cfg.callers {
		return fmt.Errorf("need -conns >= 1, -callers >= 1 and -calls >= -callers")
	}

	// 1. A v4 server and a v3 server, each publishing Echo.
	srv4 := epollbatch.NewServer()
	if err := srv4.Register(Echo{}); err != nil {
		return err
	}
	ln4, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served4 := make(chan error, 1)
	go func() { served4 <- srv4.Serve(ln4) }()
	defer srv4.Close() // on the error paths; Shutdown below is the normal end
	v4 := server{
		name:   "v4",
		addr:   ln4.Addr().String(),
		conns:  func() int { return srv4.Stats().Conns },
		frames: func() int { return int(srv4.Stats().Frames) },
		extra:  func() string { return fmt.Sprintf(", Stats().Workers %d", srv4.Stats().Workers) },
	}
	engine := "epoll reactors, a pool of workers"
	if runtime.GOOS != "linux" {
		engine = "its portable engine: no epoll on " + runtime.GOOS
	}
	fmt.Fprintf(w, "v4 server listening on %s (%s)\n", v4.addr, engine)

	srv3 := pipeline.NewServer()
	if err := srv3.Register(Echo{}); err != nil {
		return err
	}
	ln3, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served3 := make(chan error, 1)
	go func() { served3 <- srv3.Serve(ln3) }()
	defer srv3.Close()
	v3 := server{
		name:   "v3",
		addr:   ln3.Addr().String(),
		conns:  func() int { return srv3.Stats().Conns },
		frames: func() int { return int(srv3.Stats().Frames) },
		extra:  func() string { return "" },
	}
	fmt.Fprintln(w, "v3 server listening on", v3.addr, "(a reader and a writer goroutine per connection)")

	// 2. Idle connections, one server at a time: what each costs in goroutines.
	idle := 0
	if runtime.GOOS == "linux" {
		n, err := fitConns(w, cfg.conns)
		if err != nil {
			return err
		}
		for _, s := range []server{v4, v3} {
			if err := holdIdle(w, s, n); err != nil {
				return fmt.Errorf("%s, %d idle connections: %w", s.name, n, err)
			}
		}
		idle = n
	} else {
		fmt.Fprintf(w, "idle connections: skipped on %s: v4's epoll reactors are Linux's; here v4 serves every connection with its portable engine, two goroutines each, as v3 does\n", runtime.GOOS)
	}

	// 3. Calls from many callers on one v4 client.
	c, err := epollbatch.Dial("tcp", v4.addr, epollbatch.WithCodec(codec.Raw))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := load(w, c, srv4, cfg.callers, cfg.calls); err != nil {
		return err
	}
	if err := c.Close(); err != nil {
		return err
	}

	// 4. A graceful shutdown of both.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var failed error
	for _, s := range []struct {
		server
		shutdown func(context.Context) error
		served   chan error
		calls    string
	}{
		{v4, srv4.Shutdown, served4, fmt.Sprintf("%d idle + %d calls", idle, cfg.calls)},
		{v3, srv3.Shutdown, served3, fmt.Sprintf("%d idle", idle)},
	} {
		err := s.shutdown(ctx)
		fmt.Fprintf(w, "%s Shutdown: %v (Serve returned %q); then %d connections, %d replies written in all (%s)\n",
			s.name, err, <-s.served, s.conns(), s.frames(), s.calls)
		if err != nil && failed == nil {
			failed = fmt.Errorf("%s Shutdown: %w", s.name, err)
		}
	}
	return failed
}

// fitConns returns how many idle connections this process can hold to one
// server at a time, and says how it chose: want, or fewer if the open-file
// limit (RLIMIT_NOFILE) cannot hold them. Each connection has both of its
// ends here: two descriptors. Go itself raises the soft limit to the hard
// one (less one) when a program starts, on every Unix system, so the demo
// only reads the limits, from /proc/self/limits. Raising them again with
// golang.org/x/sys/unix would add nothing, and would keep this file from
// building on Windows, where v4's portable engine runs and make vet checks.
func fitConns(w io.Writer, want int) (int, error) {
	soft, hard, err := openFileLimits()
	if err != nil {
		return 0, err
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	open := len(entries)
	const spare = 64 // the reactors' epoll and eventfd descriptors, and a margin
	fmt.Fprintf(w, "open files (RLIMIT_NOFILE, raised by Go at start towards the hard limit): soft limit %s, hard limit %s, %d open\n",
		limitString(soft), limitString(hard), open)
	most := (soft - open - spare) / 2
	if want <= most {
		return want, nil
	}
	if most < 1 {
		return 0, fmt.Errorf("the open-file limit (%d) leaves no room for idle connections", soft)
	}
	fmt.Fprintf(w, "%d connections need %d descriptors (both ends are in this process), more than the limit leaves: lowered to %d per server (raise the hard limit, e.g. ulimit -Hn, for more)\n",
		want, 2*want, most)
	return most, nil
}

// openFileLimits reads RLIMIT_NOFILE's soft and hard values from
// /proc/self/limits ("Max open files  20000  20000  files").
func openFileLimits() (soft, hard int, err error) {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			break
		}
		if soft, err = parseLimit(f[0]); err == nil {
			hard, err = parseLimit(f[1])
		}
		return soft, hard, err
	}
	return 0, 0, errors.New("no \"Max open files\" in /proc/self/limits")
}

func parseLimit(s string) (int, error) {
	if s == "unlimited" {
		return math.MaxInt, nil
	}
	return strconv.Atoi(s)
}

func limitString(n int) string {
	if n == math.MaxInt {
		return "unlimited"
	}
	return strconv.Itoa(n)
}

// payload is what the idle connections' one call sends, and Echo returns.
var payload = []byte("are you there")

// request is that call's frame, with sequence number 1, in codec.Raw.
var request = func() []byte {
	b, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Raw, "Echo.Echo", payload)
	if err != nil {
		panic(err)
	}
	return b
}()

// holdIdle opens n raw connections to s, makes one call on each, counts
// the process's goroutines and the server's connections before and
// after, then closes them and waits until the server has closed its ends.
func holdIdle(w io.Writer, s server, n int) error {
	// One connection first, without a call, so that everything a server
	// starts for its first connection (v4: the reactors, at Serve) has
	// started before counting. A call would also start a v4 worker.
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		return err
	}
	if err := waitConns(s, 1); err != nil {
		c.Close()
		return err
	}
	c.Close()
	if err := waitConns(s, 0); err != nil {
		return err
	}

	before := settledGoroutines()
	beforeConns, beforeExtra := s.conns(), s.extra()
	conns, err := openIdle(s.addr, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		return err
	}
	after := settledGoroutines()
	afterConns, afterExtra := s.conns(), s.extra()

	fmt.Fprintf(w, "%s: %d idle connections, raw TCP, one Echo call each\n", s.name, n)
	fmt.Fprintf(w, "  before: %d goroutines, Stats().Conns %d%s\n", before, beforeConns, beforeExtra)
	fmt.Fprintf(w, "  after:  %d goroutines, Stats().Conns %d%s\n", after, afterConns, afterExtra)
	fmt.Fprintf(w, "  goroutines per connection: %.2f\n", float64(after-before)/float64(n))

	for _, c := range conns {
		c.Close()
	}
	conns = conns[:0]
	if err := waitConns(s, 0); err != nil {
		return err
	}
	fmt.Fprintf(w, "  closed: %d goroutines, Stats().Conns %d\n", settledGoroutines(), s.conns())
	return nil
}

// openIdle opens n connections to addr with dialAndCall, one at a time
// (on 2 cores, a few dialers at once were no faster). On error it returns
// the connections opened so far, for the caller to close.
func openIdle(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	r := bufio.NewReader(nil)
	var buf []byte
	for range n {
		c, err := dialAndCall(addr, r, &buf)
		if err != nil {
			return conns, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// dialAndCall opens a raw TCP connection to addr, sends request and reads
// its reply with protocol.ReadFrame, through r (reset to the connection)
// and *buf (kept for the next one).
func dialAndCall(addr string, r *bufio.Reader, buf *[]byte) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(request); err != nil {
		c.Close()
		return nil, err
	}
	r.Reset(c)
	var f protocol.Frame
	if *buf, err = protocol.ReadFrame(r, 0, &f, *buf); err != nil {
		c.Close()
		return nil, err
	}
	r.Reset(nil)
	if f.Seq != 1 || f.Flags&protocol.FlagError != 0 || !bytes.Equal(f.Body, payload) {
		c.Close()
		return nil, fmt.Errorf("the Echo call failed: seq %d, error %q", f.Seq, f.Error)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// waitConns waits until s reports n connections open.
func waitConns(s server, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for s.conns() != n {
		if time.Now().After(deadline) {
			return fmt.Errorf("the server still reports %d connections, not %d", s.conns(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// settledGoroutines returns the process's goroutine count once it has
// stopped moving: goroutines that are ending (v3's, of a request just
// answered) have ended.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 50 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			break
		}
		n = m
	}
	return n
}

// load makes calls Echo calls from callers goroutines sharing c, and prints
// the rate and the batching the client's and the server's Stats show.
func load(w io.Writer, c *epollbatch.Client, srv *epollbatch.Server, callers, calls int) error {
	ctx := context.Background()
	arg := []byte("hello, reactor")
	client0, server0 := c.Stats(), srv.Stats()

	errs := make(chan error, callers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range callers {
		each := calls / callers
		if i < calls%callers {
			each++
		}
		wg.Go(func() {
			var reply []byte
			for range each {
				if err := c.Call(ctx, "Echo.Echo", arg, &reply); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(reply, arg) {
					errs <- fmt.Errorf("Echo.Echo returned %q", reply)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	// A reactor counts a writev, and the replies it wrote leave the count in
	// flight, once the writev has returned, which can be just after the
	// caller has its reply: wait for that, for final counts.
	for deadline := time.Now().Add(5 * time.Second); srv.Stats().InFlight > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	cs, ss := c.Stats(), srv.Stats()

	fmt.Fprintf(w, "v4 client (codec.Raw), %d callers, %d calls: %v, %.0f calls/s (in-process: client and server share this machine's %d cores; it moves between runs)\n",
		callers, calls, elapsed.Round(time.Millisecond), float64(calls)/elapsed.Seconds(), runtime.NumCPU())
	writes := "writev" // the reactors' system call; the portable engine's is write
	if runtime.GOOS != "linux" {
		writes = "writes"
	}
	cw, cf := cs.Writes-client0.Writes, cs.Frames-client0.Frames
	fmt.Fprintf(w, "  client Stats: %d connection, %d dialed, %d pending; %d requests in %d %s: %s per write\n",
		cs.Conns, cs.Dials, cs.Pending, cf, cw, writes, ratio(cf, cw))
	sw, sf := ss.Writes-server0.Writes, ss.Frames-server0.Frames
	fmt.Fprintf(w, "  server Stats: %d connection, %d in flight; %d replies in %d %s: %s per write; %d workers busy, %d alive, %d overloaded\n",
		ss.Conns, ss.InFlight, sf, sw, writes, ratio(sf, sw), ss.WorkersBusy, ss.Workers, ss.Overloaded)
	return nil
}

func ratio(frames, writes int64) string {
	if writes == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(frames)/float64(writes), 'f', 1, 64)
}
