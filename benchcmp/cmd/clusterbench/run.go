package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// How "traffic moved" is measured: the first window of moveWindow,
// starting every moveStep at or after the killed server's endpoint left
// the balancer, in which calls/s is at least moveShare of the rate
// before the kill.
const (
	moveWindow = 100 * time.Millisecond
	moveStep   = 10 * time.Millisecond
	moveShare  = 0.9
)

// scenario is one run's setting.
type scenario struct {
	name       string // "steady", "failover", "failover-idempotent"
	servers    int
	kill       bool // kill one server at cfg.killAt of the run
	idempotent bool // mark the calls cluster.Idempotent
}

// scenarios lists the runs cfg asks for, in order.
func scenarios(cfg *config) []scenario {
	var ss []scenario
	for _, n := range cfg.servers {
		ss = append(ss, scenario{name: "steady", servers: n})
	}
	if cfg.failover > 0 {
		ss = append(ss,
			scenario{name: "failover", servers: cfg.failover, kill: true},
			scenario{name: "failover-idempotent", servers: cfg.failover, kill: true, idempotent: true})
	}
	return ss
}

// result is what one run measured, and what went wrong around it.
type result struct {
	sc        scenario
	cfg       *config
	t         *tally
	calls     int64   // successful calls that ended in the measured period
	rate      float64 // calls/s of those
	p50, p99  time.Duration
	perServer []int64 // calls each server took in the measured period (Stats), by child
	killed    int     // the killed child; -1 for none
	// killedState is the killed server's endpoint in Stats at the end
	// of the measured period.
	killedState string
	// resent counts the calls sent again elsewhere: the sum of the
	// endpoints' Stats.Calls (each sending of a call) less the calls
	// made; -1 if unknown.
	resent int64
	// The failover: calls/s before the kill and from moved on, and the
	// times from the kill to out and to moved (-1: never).
	preRate, postRate float64
	out, moved        time.Duration
	err               error // starting, dialling or ending the servers
}

// runScenario starts sc.servers children, drives them through one cluster
// client for cfg's workload, and ends them, on every path.
func runScenario(ctx context.Context, self string, cfg *config, sc scenario, log io.Writer) *result {
	r := &result{sc: sc, cfg: cfg, killed: -1, resent: -1, out: -1, moved: -1}
	children, err := startChildren(self, sc.servers)
	if err != nil {
		r.err = err
		return r
	}
	defer func() { r.err = errors.Join(r.err, endChildren(children)) }()
	addrs := make([]string, len(children))
	for i, ch := range children {
		addrs[i] = ch.Addr
		fmt.Fprintf(log, "   server %d: pid %d on %s\n", i, ch.Pid(), ch.Addr)
	}
	c, err := dialCluster(addrs, cfg.balancer)
	if err != nil {
		r.err = fmt.Errorf("cluster.Dial: %w", err)
		return r
	}
	closed := false
	closeClient := func() error {
		if closed {
			return nil
		}
		closed = true
		return c.Close()
	}
	defer func() { r.err = errors.Join(r.err, closeClient()) }()

	l := load{
		callers: cfg.callers, size: cfg.size, warmup: cfg.warmup, duration: cfg.duration,
		deadline: cfg.deadline, idempotent: sc.idempotent,
	}
	var before, after map[string]cluster.EndpointStats
	var sent int64
	l.onStart = func() { before = statsByAddr(c) }
	l.onEnd = func() { after = statsByAddr(c) }
	l.onDrained = func() { sent = attempts(c) }
	if sc.kill {
		r.killed = len(children) - 1
		victim := children[r.killed]
		l.event = &event{
			at:  time.Duration(cfg.killAt * float64(cfg.duration)),
			do:  victim.kill,
			out: func() bool { return outOfBalancer(c, victim.Addr) },
		}
		fmt.Fprintf(log, "   kill -9 of server %d (pid %d) at %v of the measured %v\n",
			r.killed, victim.Pid(), l.event.at, cfg.duration)
	}
	r.t = drive(ctx, c, closeClient, l)
	r.perServer = make([]int64, len(addrs))
	for i, a := range addrs {
		r.perServer[i] = after[a].Calls - before[a].Calls
	}
	if r.t.abandoned == 0 {
		r.resent = sent - r.t.calls()
	}
	if r.killed >= 0 {
		s := after[addrs[r.killed]]
		r.killedState = fmt.Sprintf("%s, %d failures", s.State, s.Failures)
		if s.LastError != nil {
			r.killedState += fmt.Sprintf(", last: %v", s.LastError)
		}
	}
	r.summarize()
	return r
}

// summarize computes the figures of r from its tally.
func (r *result) summarize() {
	t := r.t
	r.out, r.moved, r.preRate, r.postRate = -1, -1, 0, 0
	// The calls that ended in the measured period.
	in := t.samples[:countBefore(t.samples, t.elapsed)]
	n := len(in)
	r.calls = int64(n)
	if t.elapsed > 0 {
		r.rate = float64(n) / t.elapsed.Seconds()
	}
	lat := make([]time.Duration, 0, n)
	for _, s := range in {
		lat = append(lat, s.lat)
	}
	slices.Sort(lat)
	r.p50, r.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	if t.eventAt <= 0 {
		return
	}
	r.preRate = float64(countBefore(t.samples, t.eventAt)) / t.eventAt.Seconds()
	if t.outAt < 0 {
		return
	}
	r.out = t.outAt - t.eventAt
	if at, ok := movedAt(t.samples, t.outAt, t.elapsed, r.preRate); ok {
		r.moved = at - t.eventAt
		if span := t.elapsed - at; span > 0 {
			r.postRate = float64(n-countBefore(t.samples, at)) / span.Seconds()
		}
	}
}

// countBefore counts the samples (sorted by end) that ended before d.
func countBefore(samples []sample, d time.Duration) int {
	i, _ := slices.BinarySearchFunc(samples, d, func(s sample, d time.Duration) int {
		if s.end < d {
			return -1
		}
		return 1
	})
	return i
}

// movedAt returns the start of the first window [s, s+moveWindow), for s
// = from, from+moveStep, ..., that ends by end and in which the calls
// that ended (samples, sorted by end) come to at least moveShare of rate
// calls/s. ok is false if there is none.
func movedAt(samples []sample, from, end time.Duration, rate float64) (s time.Duration, ok bool) {
	need := moveShare * rate * moveWindow.Seconds()
	for s = from; s+moveWindow <= end; s += moveStep {
		if float64(countBefore(samples, s+moveWindow)-countBefore(samples, s)) >= need {
			return s, true
		}
	}
	return 0, false
}

// percentile returns the latency below which the fraction p of the sorted
// latencies lie, as benchcmp.Result.Percentile does.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(p*float64(len(sorted)-1))]
}

// problems lists what makes r a failure, in words: every one makes
// clusterbench exit with status 1.
func (r *result) problems() []string {
	var ps []string
	if r.err != nil {
		ps = append(ps, r.err.Error())
	}
	t := r.t
	if t == nil {
		return ps
	}
	if n := t.lost(); n > 0 {
		ps = append(ps, fmt.Sprintf("%d call(s) lost without an error (%d wrong replies, %d never returned)",
			n, t.outcomes[wrongReply], t.neverReturned))
	}
	if t.abandoned > 0 {
		ps = append(ps, fmt.Sprintf("%d caller(s) still inside Call after the client was closed", t.abandoned))
	}
	if !r.sc.kill && t.failed() > 0 {
		ps = append(ps, fmt.Sprintf("%d call(s) failed with no server killed", t.failed()))
	}
	if r.sc.kill {
		if r.sc.idempotent && t.failed() > 0 {
			ps = append(ps, fmt.Sprintf("%d idempotent call(s) failed: the cluster client should have sent them elsewhere", t.failed()))
		}
		if n := t.outcomes[notSent]; n > 0 {
			ps = append(ps, fmt.Sprintf("%d call(s) returned ErrNotSent: the cluster client should have sent them elsewhere", n))
		}
		if n := t.outcomes[noEndpoints] + t.outcomes[otherErr]; n > 0 {
			ps = append(ps, fmt.Sprintf("%d call(s) failed with an error other than ErrConnLost", n))
		}
	}
	if r.sc.kill && !t.interrupted {
		switch {
		case t.eventAt < 0:
			ps = append(ps, "the server was not killed")
		case t.outAt < 0:
			ps = append(ps, "the killed server's endpoint never left the balancer")
		case r.moved < 0:
			ps = append(ps, fmt.Sprintf("calls/s never came back to %.0f%% of the rate before the kill in a %v window", 100*moveShare, moveWindow))
		}
	}
	return ps
}
