package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// method is what every call calls.
const method = "Echo.Echo"

// pollEvery is how often a failover run asks whether the killed server's
// endpoint is out of the balancer.
const pollEvery = time.Millisecond

// caller is what drive needs of a client.
type caller interface {
	Call(ctx context.Context, serviceMethod string, args, reply any) error
}

// outcome is what became of one call.
type outcome int

const (
	okCall      outcome = iota // nil error, the reply is the request
	wrongReply                 // nil error, but the reply is not the request: lost
	connLost                   // epollbatch.ErrConnLost: sent, then the connection broke
	notSent                    // epollbatch.ErrNotSent: never left, and yet it reached the caller
	noEndpoints                // cluster.ErrNoEndpoints
	otherErr                   // any other error
	nOutcomes
)

var outcomeNames = [nOutcomes]string{"ok", "wrong reply", "ErrConnLost", "ErrNotSent", "ErrNoEndpoints", "other error"}

func (o outcome) String() string { return outcomeNames[o] }

// classify says what became of a call that returned err and left reply,
// for the request want. A nil error with any reply but the request's
// bytes is a lost call; so is a nil error that left the reply as it was
// (drive empties it before each call, and each request is unique).
func classify(err error, reply, want []byte) outcome {
	switch {
	case err == nil && bytes.Equal(reply, want):
		return okCall
	case err == nil:
		return wrongReply
	case errors.Is(err, cluster.ErrNoEndpoints): // it wraps ErrNotSent too
		return noEndpoints
	case errors.Is(err, epollbatch.ErrNotSent):
		return notSent
	case errors.Is(err, epollbatch.ErrConnLost):
		return connLost
	default:
		return otherErr
	}
}

// load is one run's workload.
type load struct {
	callers    int
	size       int
	warmup     time.Duration // calls before the measured period
	duration   time.Duration // the measured period
	deadline   time.Duration // after the end, for the calls in flight
	idempotent bool          // calls marked cluster.Idempotent
	event      *event        // the failover's kill; nil for none
	// onStart and onEnd, if set, run as the measured period starts and
	// ends, and onDrained once the calls in flight have returned (or
	// deadline has passed), before the client may be closed: the
	// client's Stats are read there.
	onStart, onEnd, onDrained func()
}

// event is something done to the servers during the measured period.
type event struct {
	at time.Duration // into the measured period
	do func()
	// out is asked every pollEvery after do until it returns true: the
	// killed server is out of the balancer.
	out func() bool
	// onOut, if set, runs once out has returned true (a test's hook).
	onOut func()
}

// sample is one successful call that ended after the start of the
// measured period (those of the drain after it included).
type sample struct {
	end time.Duration // since the start of the measured period
	lat time.Duration
}

// errorAt is one failed (or wrong) call.
type errorAt struct {
	at   time.Duration // when it returned, since the start of the measured period
	warm bool          // it returned in the warm-up (at is 0)
	out  outcome
	err  error
}

// tally is what drive counted.
type tally struct {
	elapsed  time.Duration    // the measured period, as it happened
	samples  []sample         // sorted by end
	outcomes [nOutcomes]int64 // every call, warm-up and drain included
	errors   []errorAt        // every failed or wrong call, in no order
	// neverReturned counts the calls still in flight deadline after the
	// end; the client was then closed under them. Lost, as wrongReply.
	neverReturned int64
	// abandoned: callers still inside Call deadline after the client was
	// closed; their figures are missing (and their goroutines leak).
	abandoned   int
	eventAt     time.Duration // when event.do ran; -1 if it did not
	outAt       time.Duration // when event.out first said true; -1 if never
	interrupted bool
}

// calls is the number of calls made, warm-up and drain included.
func (t *tally) calls() int64 {
	n := t.neverReturned
	for _, m := range t.outcomes {
		n += m
	}
	return n
}

// lost is the number the failover runs exist for: calls that did not
// return an error and yet did not succeed.
func (t *tally) lost() int64 { return t.outcomes[wrongReply] + t.neverReturned }

// failed is the number of calls that returned an error.
func (t *tally) failed() int64 {
	var n int64
	for o := connLost; o < nOutcomes; o++ {
		n += t.outcomes[o]
	}
	return n
}

// The states of a caller, for counting the calls that never return.
const (
	idle    int32 = iota
	inCall        // inside Call
	givenUp       // counted as never returned: its outcome is not counted again
)

// callerState is one calling goroutine's own: nothing in it is shared
// until the goroutine has ended, but state.
type callerState struct {
	data     []byte
	args     any // data, boxed once: Call takes an any
	reply    []byte
	samples  []sample
	outcomes [nOutcomes]int64
	errors   []errorAt
	state    atomic.Int32
	done     atomic.Bool
}

// maxErrorsKept bounds the errors each caller keeps (they are all counted).
const maxErrorsKept = 1000

// Phases of a run.
const (
	warming int32 = iota
	measuring
	stopped
)

// drive makes calls through c from l.callers goroutines, for l.warmup and
// then for l.duration or until ctx ends, and counts what became of each.
// Calls in flight at the end get l.deadline to return; those that do not
// are counted as never returned, and closeClient is called to release
// them.
func drive(ctx context.Context, c caller, closeClient func() error, l load) *tally {
	var (
		phase atomic.Int32
		t0    time.Time // the start of the measured period: written before phase is measuring
	)
	callCtx := context.Background()
	if l.idempotent {
		callCtx = cluster.Idempotent(callCtx)
	}
	cs := make([]callerState, l.callers)
	for i := range cs {
		cl := &cs[i]
		cl.data = make([]byte, l.size)
		for j := range cl.data {
			cl.data[j] = byte(i + j)
		}
		cl.args = cl.data
		cl.reply = make([]byte, 0, l.size)
		cl.samples = make([]sample, 0, 4096)
	}
	runtime.GC() // the previous run's garbage is not this run's cost

	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := range cs {
		cl := &cs[i]
		wg.Go(func() {
			defer cl.done.Store(true)
			<-ready
			for n := uint64(0); phase.Load() != stopped; n++ {
				// The first 8 bytes name the caller and the call, so a
				// reply meant for another call cannot pass the check.
				binary.LittleEndian.PutUint64(cl.data, uint64(i)<<40|n)
				cl.reply = cl.reply[:0]
				cl.state.Store(inCall)
				start := time.Now()
				err := c.Call(callCtx, method, cl.args, &cl.reply)
				end := time.Now()
				if !cl.state.CompareAndSwap(inCall, idle) {
					return // counted as never returned
				}
				o := classify(err, cl.reply, cl.data)
				cl.outcomes[o]++
				// t0 may be read once the phase says it is written.
				warm := phase.Load() == warming
				var at time.Duration
				if !warm {
					at = end.Sub(t0)
				}
				switch {
				case o == okCall && !warm && at >= 0:
					cl.samples = append(cl.samples, sample{end: at, lat: end.Sub(start)})
				case o != okCall && len(cl.errors) < maxErrorsKept:
					cl.errors = append(cl.errors, errorAt{at: at, warm: warm, out: o, err: err})
				}
			}
		})
	}

	t := &tally{eventAt: -1, outAt: -1}
	close(ready)
	select {
	case <-time.After(l.warmup):
	case <-ctx.Done():
	}
	if l.onStart != nil {
		l.onStart()
	}
	t0 = time.Now()
	phase.Store(measuring)
	t.interrupted = measure(ctx, t, t0, l)
	t.elapsed = time.Since(t0)
	phase.Store(stopped)
	if l.onEnd != nil {
		l.onEnd()
	}

	// The calls in flight get l.deadline to return. Those that have not
	// by then are lost: counted, then released by closing the client.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		if l.onDrained != nil {
			l.onDrained()
		}
	case <-time.After(l.deadline):
		for i := range cs {
			if cs[i].state.CompareAndSwap(inCall, givenUp) {
				t.neverReturned++
			}
		}
		if l.onDrained != nil {
			l.onDrained()
		}
		_ = closeClient()
		select {
		case <-done:
		case <-time.After(l.deadline):
		}
	}

	for i := range cs {
		cl := &cs[i]
		if !cl.done.Load() {
			t.abandoned++
			continue
		}
		t.samples = append(t.samples, cl.samples...)
		for o, n := range cl.outcomes {
			t.outcomes[o] += n
		}
		t.errors = append(t.errors, cl.errors...)
		cl.samples, cl.errors = nil, nil
	}
	slices.SortFunc(t.samples, func(a, b sample) int { return cmp.Compare(a.end, b.end) })
	return t
}

// measure waits out the measured period, running the event (if any) on
// time and polling for its effect. It reports whether ctx ended it early.
func measure(ctx context.Context, t *tally, t0 time.Time, l load) (interrupted bool) {
	end := time.NewTimer(l.duration)
	defer end.Stop()
	var at <-chan time.Time
	if l.event != nil {
		tm := time.NewTimer(l.event.at)
		defer tm.Stop()
		at = tm.C
	}
	var poll <-chan time.Time
	for {
		select {
		case <-end.C:
			return false
		case <-ctx.Done():
			return true
		case <-at:
			t.eventAt = time.Since(t0)
			l.event.do()
			tk := time.NewTicker(pollEvery)
			defer tk.Stop()
			poll = tk.C
		case <-poll:
			if l.event.out() {
				t.outAt = time.Since(t0)
				poll = nil
				if l.event.onOut != nil {
					l.event.onOut()
				}
			}
		}
	}
}
