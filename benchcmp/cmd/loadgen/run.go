package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strings"
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

// runAgainstChild starts the server child, drives it from one client for
// spec.duration and ends the child. The summary is nil if no run took
// place; err reports what went wrong around the run.
func runAgainstChild(ctx context.Context, self string, spec runSpec, p *progress) (*summary, error) {
	ch, err := benchcmp.StartServer(exec.Command(self, "-"+serveFlag, spec.impl.Name))
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(p.w, "   server: pid %d on %s\n", ch.Pid(), ch.Addr)
	c, err := spec.impl.Dial(ch.Addr)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("dial: %w", err), ch.End())
	}
	cpu := &benchcmp.CPUMeter{Server: ch}
	edge := cpu.Edge
	if path := os.Getenv("LOADGEN_CLIENT_CPUPROFILE"); path != "" {
		edge = profileWindow(path, cpu.Edge)
	}
	s, err := drive(ctx, c, spec, p, edge)
	if s != nil && cpu.Err == nil && s.calls > 0 && !s.interrupted {
		s.srvCPU = cpu.ServerCPU / time.Duration(s.calls)
		s.cliCPU = cpu.ClientCPU / time.Duration(s.calls)
	}
	return s, errors.Join(err, c.Close(), ch.End())
}

// drive makes calls through c from spec.callers goroutines until
// spec.duration has passed or ctx is done, checking every reply, and
// reports progress through p once a second. onWindow, if set, is called
// as the run starts and ends (Load.OnWindow).
func drive(ctx context.Context, c benchcmp.Client, spec runSpec, p *progress, onWindow func(bool)) (*summary, error) {
	load := &benchcmp.Load{
		Clients:  []benchcmp.Client{c},
		Method:   spec.method,
		Callers:  spec.callers,
		Size:     spec.size,
		Window:   spec.duration,
		Progress: p.update,
		OnWindow: onWindow,
	}
	res, err := load.Run(ctx)
	p.done()
	if err != nil {
		return nil, err
	}
	s := summarize(spec, res.Latencies, res.Elapsed)
	s.errors, s.firstErr, s.interrupted = res.Errors, res.FirstErr, res.Interrupted
	return s, nil
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
	// srvCPU and cliCPU are the CPU time per call of the server child and
	// of loadgen (user + system), 0 if unknown.
	srvCPU, cliCPU time.Duration
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
	if s.srvCPU > 0 || s.cliCPU > 0 {
		fmt.Fprintf(&b, "; CPU per call: server %s, client %s", fmtCPU(s.srvCPU), fmtCPU(s.cliCPU))
	}
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
	fmt.Fprintln(tw, "impl\tmethod\tsize\tcallers\tcalls/s\tp50\tp99\tp99.9\tmax\terrors\tsrv CPU/call\tcli CPU/call\t")
	for _, s := range sums {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t\n",
			s.spec.impl.Name, s.spec.method, s.spec.size, s.spec.callers, s.callsPerSec,
			fmtDur(s.p50), fmtDur(s.p99), fmtDur(s.p999), fmtDur(s.maxLat), s.errors,
			fmtCPU(s.srvCPU), fmtCPU(s.cliCPU))
	}
	tw.Flush()
}

// fmtCPU is fmtDur, with "-" for unknown (0), and two significant
// digits below 10µs: 3.4µs.
func fmtCPU(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < 10*time.Microsecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	}
	return fmtDur(d)
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

// profileWindow returns onWindow with this process's CPU profile written
// to path for the measured window (LOADGEN_CLIENT_CPUPROFILE: use it with
// one -impl and one -callers, or each run overwrites the file). A profile
// that cannot be written is reported on stderr, and the run goes on.
func profileWindow(path string, onWindow func(bool)) func(bool) {
	var f *os.File
	return func(start bool) {
		onWindow(start)
		if start {
			var err error
			if f, err = os.Create(path); err == nil {
				if err = pprof.StartCPUProfile(f); err != nil {
					f.Close()
					f = nil // not ours to stop (another profile runs)
				}
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "loadgen: client profile:", err)
			}
			return
		}
		if f != nil {
			pprof.StopCPUProfile()
			if err := f.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "loadgen: client profile:", err)
			}
			f = nil
		}
	}
}
