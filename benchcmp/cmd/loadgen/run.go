package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/rpcsteps/rpcsteps/benchcmp"
)

// runSpec is one run: an implementation, a workload and a caller count.
type runSpec struct {
	impl     benchcmp.Impl
	method   string
	callers  int
	size     int
	duration time.Duration
}

func (r runSpec) String() string {
	return fmt.Sprintf("impl=%s method=%s size=%d callers=%d duration=%v",
		r.impl.Name, r.method, r.size, r.callers, r.duration)
}

// Timeouts around the child process and the end of a run.
const (
	childStartTimeout = 10 * time.Second
	childEndTimeout   = 10 * time.Second
	// drainTimeout is how long the calls in flight at the end of a run
	// may take before the client is closed under them.
	drainTimeout = 30 * time.Second
	// maxErrors failed calls end a run early.
	maxErrors = 1000
)

// serveChild is the child: it serves im on a loopback port, prints the
// address as the first line of out, and serves until SIGTERM or until in
// (the parent's pipe) closes, which happens if the parent dies.
func serveChild(im benchcmp.Impl, in io.Reader, out io.Writer) error {
	// Ctrl-C in a terminal reaches the whole process group; the parent
	// decides when the server ends, after its calls have returned.
	signal.Ignore(os.Interrupt)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	stop, err := im.Serve(ln)
	if err != nil {
		ln.Close()
		return err
	}
	defer stop()
	// LOADGEN_SERVER_CPUPROFILE: the server's CPU profile, for pprof (the
	// last server started writes it: use it with one -impl and one -callers).
	if path := os.Getenv("LOADGEN_SERVER_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if _, err := fmt.Fprintln(out, ln.Addr()); err != nil {
		return err
	}
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, in)
		close(eof)
	}()
	select {
	case <-term:
	case <-eof:
	}
	return nil
}

// child is a server process started by startChild.
type child struct {
	cmd   *exec.Cmd
	stdin io.Closer
	addr  string
}

// startChild re-executes self as the server of the implementation named
// name and reads the address it listens on.
func startChild(self, name string) (*child, error) {
	cmd := exec.Command(self, "-"+serveFlag, name)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the server process: %w", err)
	}
	ch := &child{cmd: cmd, stdin: stdin}

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case ch.addr = <-line:
	case <-time.After(childStartTimeout):
	}
	if ch.addr == "" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("the server process printed no address within %v", childStartTimeout)
	}
	return ch, nil
}

// end signals the child with SIGTERM and waits for it to exit; if it has
// not exited after childEndTimeout, it is killed.
func (c *child) end() error {
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		c.stdin.Close() // no SIGTERM here (Windows): a closed stdin ends it too
	}
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("server process (pid %d): %w", c.cmd.Process.Pid, err)
		}
		return nil
	case <-time.After(childEndTimeout):
		_ = c.cmd.Process.Kill()
		<-done
		return fmt.Errorf("server process (pid %d) did not exit within %v of SIGTERM: killed", c.cmd.Process.Pid, childEndTimeout)
	}
}

// runAgainstChild starts the server child, drives it from one client for
// spec.duration and ends the child. The summary is nil if no run took
// place; err reports what went wrong around the run.
func runAgainstChild(ctx context.Context, self string, spec runSpec, p *progress) (*summary, error) {
	ch, err := startChild(self, spec.impl.Name)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(p.w, "   server: pid %d on %s\n", ch.cmd.Process.Pid, ch.addr)
	c, err := spec.impl.Dial(ch.addr)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("dial: %w", err), ch.end())
	}
	s := drive(ctx, c, spec, p)
	return s, errors.Join(c.Close(), ch.end())
}

// caller is one calling goroutine's state. Each has its own latencies, so
// that recording one needs no synchronisation; they are merged at the end.
type caller struct {
	data  []byte
	args  any // data, boxed once: Call takes an any
	reply []byte
	lat   []time.Duration
}

// drive makes calls through c from spec.callers goroutines until
// spec.duration has passed or ctx is done, checking every reply, and
// reports progress through p once a second.
func drive(ctx context.Context, c benchcmp.Client, spec runSpec, p *progress) *summary {
	var (
		stop     atomic.Bool
		calls    atomic.Int64
		nerrs    atomic.Int64
		errMu    sync.Mutex
		firstErr error
	)
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
		if nerrs.Add(1) >= maxErrors {
			stop.Store(true)
		}
	}

	cs := make([]caller, spec.callers)
	for i := range cs {
		cl := &cs[i]
		cl.data = make([]byte, spec.size)
		for j := range cl.data {
			cl.data[j] = byte(i + j)
		}
		cl.args = cl.data
		cl.reply = make([]byte, 0, spec.size)
		cl.lat = make([]time.Duration, 0, 1024)
	}
	runtime.GC() // the previous run's garbage is not this run's cost

	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := range cs {
		cl := &cs[i]
		wg.Go(func() {
			<-ready
			for n := uint64(0); !stop.Load(); n++ {
				// The first 8 bytes name the caller and the call, so a
				// reply meant for another call cannot pass the check.
				binary.LittleEndian.PutUint64(cl.data, uint64(i)<<40|n)
				t0 := time.Now()
				err := c.Call(context.Background(), spec.method, cl.args, &cl.reply)
				d := time.Since(t0)
				switch {
				case err != nil:
					fail(fmt.Errorf("caller %d call %d: %w", i, n, err))
				case !bytes.Equal(cl.reply, cl.data):
					fail(fmt.Errorf("caller %d call %d: reply of %d bytes does not match its request", i, n, len(cl.reply)))
				default:
					cl.lat = append(cl.lat, d)
					calls.Add(1)
				}
			}
		})
	}

	t0 := time.Now()
	close(ready)
	timer := time.NewTimer(spec.duration)
	defer timer.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last, lastT := int64(0), t0
	interrupted := false
loop:
	for {
		select {
		case <-timer.C:
			break loop
		case <-ctx.Done():
			interrupted = true
			break loop
		case now := <-tick.C:
			n := calls.Load()
			p.update(now.Sub(t0), n, float64(n-last)/now.Sub(lastT).Seconds())
			last, lastT = n, now
			if stop.Load() {
				break loop // too many errors
			}
		}
	}
	stop.Store(true)

	// Wait for the calls in flight; if they hang, close the client under
	// them.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drainTimeout):
		fail(fmt.Errorf("calls still in flight %v after the end of the run: closed the client", drainTimeout))
		c.Close()
		<-done
	}
	elapsed := time.Since(t0)
	p.done()

	var lat []time.Duration
	for i := range cs {
		lat = append(lat, cs[i].lat...)
		cs[i].lat = nil
	}
	s := summarize(spec, lat, elapsed)
	s.errors, s.firstErr, s.interrupted = nerrs.Load(), firstErr, interrupted
	return s
}

// summary is what one run measured.
type summary struct {
	spec                   runSpec
	calls                  int64
	elapsed                time.Duration
	callsPerSec            float64
	p50, p99, p999, maxLat time.Duration
	errors                 int64
	firstErr               error
	interrupted            bool
}

// summarize computes throughput and percentiles from the latencies of the
// successful calls (which it sorts in place).
func summarize(spec runSpec, lat []time.Duration, elapsed time.Duration) *summary {
	slices.Sort(lat)
	r := benchcmp.Result{Calls: int64(len(lat)), Elapsed: elapsed, Latencies: lat}
	s := &summary{spec: spec, calls: r.Calls, elapsed: elapsed}
	if elapsed > 0 {
		s.callsPerSec = r.CallsPerSec()
	}
	s.p50, s.p99, s.p999 = r.Percentile(0.50), r.Percentile(0.99), r.Percentile(0.999)
	if len(lat) > 0 {
		s.maxLat = lat[len(lat)-1]
	}
	return s
}

func (s *summary) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "   %s: %d calls in %v: %.0f calls/s; latency p50 %s  p99 %s  p99.9 %s  max %s; %d errors",
		s.spec.impl.Name, s.calls, s.elapsed.Round(time.Millisecond), s.callsPerSec,
		fmtDur(s.p50), fmtDur(s.p99), fmtDur(s.p999), fmtDur(s.maxLat), s.errors)
	if s.firstErr != nil {
		fmt.Fprintf(&b, " (first: %v)", s.firstErr)
	}
	if s.interrupted {
		b.WriteString(" (interrupted)")
	}
	return b.String()
}

// printTable prints one line per run.
func printTable(w io.Writer, sums []*summary) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "impl\tmethod\tsize\tcallers\tcalls/s\tp50\tp99\tp99.9\tmax\terrors\t")
	for _, s := range sums {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%d\t\n",
			s.spec.impl.Name, s.spec.method, s.spec.size, s.spec.callers, s.callsPerSec,
			fmtDur(s.p50), fmtDur(s.p99), fmtDur(s.p999), fmtDur(s.maxLat), s.errors)
	}
	tw.Flush()
}

// fmtDur prints d with three significant digits or so: 812µs, 1.25ms, 2.50s.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	case d >= time.Microsecond:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	default:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	}
}

// progress prints a line a second during a run: over itself (\r) on a
// terminal, one line each otherwise (a file, a pipe to tee).
type progress struct {
	w   io.Writer
	tty bool
}

func newProgress(f *os.File) *progress {
	fi, err := f.Stat()
	return &progress{w: f, tty: err == nil && fi.Mode()&os.ModeCharDevice != 0}
}

func (p *progress) update(elapsed time.Duration, calls int64, rate float64) {
	line := fmt.Sprintf("   %4.0fs  %10d calls  %9.0f calls/s in the last second", elapsed.Seconds(), calls, rate)
	if p.tty {
		fmt.Fprintf(p.w, "\r%s", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
}

// done ends the progress line; on a terminal it erases it.
func (p *progress) done() {
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
