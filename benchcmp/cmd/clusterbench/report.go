package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// bench runs every scenario cfg asks for and prints what they measured
// to out. It returns the results, and whether every run was free of
// problems (which it prints too).
func bench(ctx context.Context, self string, cfg *config, out io.Writer) ([]*result, bool) {
	printHeader(out, cfg)
	var rs []*result
	for _, sc := range scenarios(cfg) {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(out, "\n== %s, %d server(s)\n", sc.name, sc.servers)
		r := runScenario(ctx, self, cfg, sc, out)
		if r.t != nil {
			fmt.Fprintln(out, r.line())
		}
		rs = append(rs, r)
	}
	fmt.Fprintln(out)
	printTables(out, rs)
	fmt.Fprintln(out)
	printBenchLines(out, rs)
	fmt.Fprintln(out)
	ok := true
	for _, r := range rs {
		for _, p := range r.problems() {
			fmt.Fprintf(out, "FAIL: %s, %d server(s): %s\n", r.sc.name, r.sc.servers, p)
			ok = false
		}
	}
	if ok {
		fmt.Fprintln(out, "OK: no call lost, no unexpected failure")
	}
	return rs, ok
}

// printHeader says what the runs are, and what they cannot show.
func printHeader(w io.Writer, cfg *config) {
	fmt.Fprintf(w, "== clusterbench: one cluster.Client (%s) over v4 server processes on loopback; %d callers, %s of %d B; %v warm-up, then %v measured\n",
		balancerName(cfg.balancer), cfg.callers, method, cfg.size, cfg.warmup, cfg.duration)
	fmt.Fprintf(w, "   %s/%s, %d CPUs (GOMAXPROCS %d), %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	fmt.Fprintf(w, "   note: every server process and this client share the same %d CPUs: more servers add\n"+
		"   processes, not capacity. The steady runs show that the cluster client is correct and what\n"+
		"   it costs, not how a cluster scales.\n", runtime.NumCPU())
	if cfg.failover > 0 {
		fmt.Fprintf(w, "   failover: %d servers; kill -9 of one at %.0f%% of the measured period, with plain calls, then with calls marked Idempotent.\n"+
			"     lost:   calls that returned nil with a reply not their request's, or that had not returned %v after the run: must be 0\n"+
			"     failed: calls that returned an error, by class; ErrConnLost: sent to the killed server (may have run there)\n"+
			"     resent: sendings of a call after its first, elsewhere (the endpoints' Stats.Calls, summed, less the calls made)\n"+
			"     out:    from the kill to the first Stats poll (every %v) showing the killed endpoint out of the balancer\n"+
			"     moved:  from the kill to the start of the first %v window (one every %v), at or after out, whose calls/s\n"+
			"             is at least %.0f%% of the calls/s before the kill\n",
			cfg.failover, 100*cfg.killAt, cfg.deadline, pollEvery, moveWindow, moveStep, 100*moveShare)
	}
}

func balancerName(b string) string {
	if b == "rr" {
		return "RoundRobin"
	}
	return "P2C"
}

// line is a run's summary in a sentence or two.
func (r *result) line() string {
	t := r.t
	var b strings.Builder
	fmt.Fprintf(&b, "   %d calls in %v: %.0f calls/s; latency p50 %s  p99 %s; %d failed, %d lost, %d resent; calls per server %s",
		r.calls, t.elapsed.Round(time.Millisecond), r.rate, fmtDur(r.p50), fmtDur(r.p99),
		t.failed(), t.lost(), r.resent, r.perServerString())
	if r.sc.kill {
		fmt.Fprintf(&b, "\n   failed by class: %s\n   out %s, moved %s; calls/s %.0f before the kill, %.0f from moved on",
			r.failedString(), fmtMaybe(r.out), fmtMaybe(r.moved), r.preRate, r.postRate)
		if first, last, ok := r.errorSpan(); ok {
			fmt.Fprintf(&b, "; failed calls returned from %s to %s after the kill", fmtSigned(first), fmtSigned(last))
		}
		fmt.Fprintf(&b, "\n   the killed server's endpoint at the end: %s", r.killedState)
	}
	if e := r.firstError(); e != nil {
		fmt.Fprintf(&b, "\n   first error: %s: %v", e.out, e.err)
	}
	if t.interrupted {
		b.WriteString(" (interrupted)")
	}
	return b.String()
}

// errorSpan is when the first and the last failed call of the measured
// period returned, from the kill.
func (r *result) errorSpan() (first, last time.Duration, ok bool) {
	for _, e := range r.t.errors {
		if e.warm {
			continue
		}
		d := e.at - r.t.eventAt
		if !ok || d < first {
			first = d
		}
		if !ok || d > last {
			last = d
		}
		ok = true
	}
	return first, last, ok
}

// firstError is the failed call that returned first: in the warm-up (of
// those, any), or else the earliest of the measured period.
func (r *result) firstError() *errorAt {
	var first *errorAt
	for i := range r.t.errors {
		e := &r.t.errors[i]
		switch {
		case first == nil, e.warm && !first.warm:
			first = e
		case !e.warm && !first.warm && e.at < first.at:
			first = e
		}
	}
	return first
}

func (r *result) perServerString() string {
	var parts []string
	for i, n := range r.perServer {
		s := fmt.Sprint(n)
		if i == r.killed {
			s += " (killed)"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " / ")
}

func (r *result) failedString() string {
	var parts []string
	for o := connLost; o < nOutcomes; o++ {
		parts = append(parts, fmt.Sprintf("%s %d", o, r.t.outcomes[o]))
	}
	return strings.Join(parts, ", ")
}

// printTables prints the steady runs, then the failover runs.
func printTables(w io.Writer, rs []*result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tservers\tbalancer\tcalls/s\tp50\tp99\tfailed\tlost\tresent\tcalls per server\t")
	for _, r := range rs {
		if r.t == nil {
			fmt.Fprintf(tw, "%s\t%d\t%s\t-\t-\t-\t-\t-\t-\t(did not run: %v)\t\n", r.sc.name, r.sc.servers, r.cfg.balancer, r.err)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%s\t%s\t%d\t%d\t%d\t%s\t\n", r.sc.name, r.sc.servers, r.cfg.balancer,
			r.rate, fmtDur(r.p50), fmtDur(r.p99), r.t.failed(), r.t.lost(), r.resent, r.perServerString())
	}
	tw.Flush()

	var kills []*result
	for _, r := range rs {
		if r.sc.kill && r.t != nil {
			kills = append(kills, r)
		}
	}
	if len(kills) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tlost\tfailed\tErrConnLost\tErrNotSent\tother\tresent\tout\tmoved\tcalls/s before\tafter\t")
	for _, r := range kills {
		t := r.t
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%.0f\t%.0f\t\n", r.sc.name, t.lost(), t.failed(),
			t.outcomes[connLost], t.outcomes[notSent], t.outcomes[noEndpoints]+t.outcomes[otherErr], r.resent,
			fmtMaybe(r.out), fmtMaybe(r.moved), r.preRate, r.postRate)
	}
	tw.Flush()
}

// printBenchLines prints one line per run in the Go benchmark format, for
// scripts and go tool benchstat.
func printBenchLines(w io.Writer, rs []*result) {
	fmt.Fprintln(w, "# one line per run, in the Go benchmark format (go tool benchstat reads these)")
	for _, r := range rs {
		t := r.t
		if t == nil || r.calls == 0 {
			continue
		}
		fmt.Fprintf(w, "BenchmarkCluster/run=%s/servers=%d/balancer=%s/callers=%d/size=%d %d %.0f ns/op %.0f calls/s %d p50-ns %d p99-ns %d failed %d lost %d resent",
			r.sc.name, r.sc.servers, r.cfg.balancer, r.cfg.callers, r.cfg.size, r.calls,
			float64(t.elapsed.Nanoseconds())/float64(r.calls), r.rate, r.p50.Nanoseconds(), r.p99.Nanoseconds(), t.failed(), t.lost(), r.resent)
		if r.sc.kill {
			fmt.Fprintf(w, " %d connlost %d notsent %d other-errors %.2f out-ms %.2f moved-ms",
				t.outcomes[connLost], t.outcomes[notSent], t.outcomes[noEndpoints]+t.outcomes[otherErr],
				ms(r.out), ms(r.moved))
		}
		fmt.Fprintln(w)
	}
}

// ms is d in milliseconds; -1 for never.
func ms(d time.Duration) float64 {
	if d < 0 {
		return -1
	}
	return float64(d) / 1e6
}

func fmtMaybe(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmtDur(d)
}

func fmtSigned(d time.Duration) string {
	if d < 0 {
		return "-" + fmtDur(-d)
	}
	return "+" + fmtDur(d)
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
