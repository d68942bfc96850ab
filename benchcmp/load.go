package benchcmp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Load is a run of calls for a fixed time, where Drive makes a fixed
// number: Callers goroutines call Method through Clients (caller i uses
// Clients[i % len(Clients)]) with payloads of Size bytes, and every reply
// is checked against its request. The calls of the first Warmup are not
// measured; those that end in the Window after it are. cmd/loadgen and the
// cross-process benchmarks (benchcmp/cross) run it.
type Load struct {
	Clients []Client
	Method  string
	Callers int
	Size    int
	// Warmup is how long the callers call before the window opens.
	Warmup time.Duration
	// Window is how long the measured part lasts.
	Window time.Duration
	// OnWindow, if set, is called just before the window opens (true)
	// and just after it closes (false), from the goroutine that called
	// Run: to read CPU counters, or to start and stop a benchmark's timer.
	OnWindow func(open bool)
	// Progress, if set, is called about once a second during the window
	// with the time since it opened, the calls measured so far and the
	// rate since the previous call.
	Progress func(elapsed time.Duration, calls int64, rate float64)
	// MaxErrors failed calls end the run early; 0 means 1000.
	MaxErrors int64
	// DrainTimeout is how long the calls in flight when the window
	// closes may take before the clients are closed under them; 0 means
	// 30 s.
	DrainTimeout time.Duration
}

// LoadResult is what a Load measured. Result holds the calls that ended
// in the window, their latencies (sorted) and the window's length.
type LoadResult struct {
	Result
	// Errors counts the failed calls, warm-up included, and FirstErr is
	// the first of them.
	Errors   int64
	FirstErr error
	// Interrupted is set if ctx ended the run before the window closed.
	Interrupted bool
}

// Err returns the first failed call's error, with the count, or nil.
func (r *LoadResult) Err() error {
	if r.Errors == 0 {
		return nil
	}
	return fmt.Errorf("%d failed calls, the first: %w", r.Errors, r.FirstErr)
}

// The phases of a Load's callers.
const (
	phaseWarmup int32 = iota
	phaseWindow
	phaseStop
)

// loadCaller is one calling goroutine's state. Each has its own latencies,
// so that recording one needs no synchronisation; they are merged at the
// end.
type loadCaller struct {
	data  []byte
	args  any // data, boxed once: Call takes an any
	reply []byte
	lat   []time.Duration
}

// Run runs the load until the window has closed, or ctx is done, or
// MaxErrors calls have failed.
func (l *Load) Run(ctx context.Context) (*LoadResult, error) {
	if l.Size < 8 {
		return nil, errors.New("benchcmp: payloads are at least 8 bytes (they carry the caller and call number)")
	}
	if l.Callers < 1 || len(l.Clients) == 0 {
		return nil, errors.New("benchcmp: a load needs a caller and a client")
	}
	maxErrors, drain := l.MaxErrors, l.DrainTimeout
	if maxErrors <= 0 {
		maxErrors = 1000
	}
	if drain <= 0 {
		drain = 30 * time.Second
	}
	var (
		phase    atomic.Int32
		calls    atomic.Int64 // in the window
		nerrs    atomic.Int64
		errMu    sync.Mutex
		firstErr error
	)
	tooMany := make(chan struct{})
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
		if nerrs.Add(1) == maxErrors {
			close(tooMany)
		}
	}

	cs := make([]loadCaller, l.Callers)
	for i := range cs {
		cl := &cs[i]
		cl.data = make([]byte, l.Size)
		for j := range cl.data {
			cl.data[j] = byte(i + j)
		}
		cl.args = cl.data
		cl.reply = make([]byte, 0, l.Size)
		cl.lat = make([]time.Duration, 0, 1024)
	}
	runtime.GC() // the previous run's garbage is not this run's cost

	var wg sync.WaitGroup
	for i := range cs {
		cl := &cs[i]
		c := l.Clients[i%len(l.Clients)]
		wg.Go(func() {
			for n := uint64(0); phase.Load() != phaseStop; n++ {
				// The first 8 bytes name the caller and the call, so a
				// reply meant for another call cannot pass the check.
				binary.LittleEndian.PutUint64(cl.data, uint64(i)<<40|n)
				t0 := time.Now()
				err := c.Call(context.Background(), l.Method, cl.args, &cl.reply)
				d := time.Since(t0)
				switch {
				case err != nil:
					fail(fmt.Errorf("caller %d call %d: %w", i, n, err))
				case !bytes.Equal(cl.reply, cl.data):
					fail(fmt.Errorf("caller %d call %d: reply of %d bytes does not match its request", i, n, len(cl.reply)))
				case phase.Load() == phaseWindow:
					cl.lat = append(cl.lat, d)
					calls.Add(1)
				}
			}
		})
	}

	res := &LoadResult{}
	wait := func(d time.Duration) bool { // false if the run must end now
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-tooMany:
		case <-ctx.Done():
			res.Interrupted = true
		}
		return false
	}
	var t0, t1 time.Time
	if wait(l.Warmup) {
		if l.OnWindow != nil {
			l.OnWindow(true)
		}
		t0 = time.Now()
		phase.Store(phaseWindow)
		end := t0.Add(l.Window)
		last, lastT := int64(0), t0
		for {
			step := time.Until(end)
			if l.Progress != nil {
				step = min(step, time.Second)
			}
			if step <= 0 {
				break
			}
			if !wait(step) {
				break
			}
			if now := time.Now(); l.Progress != nil && now.Before(end) {
				n := calls.Load()
				l.Progress(now.Sub(t0), n, float64(n-last)/now.Sub(lastT).Seconds())
				last, lastT = n, now
			}
		}
		phase.Store(phaseStop)
		t1 = time.Now()
		if l.OnWindow != nil {
			l.OnWindow(false)
		}
	}
	phase.Store(phaseStop)

	// Wait for the calls in flight; if they hang, close the clients
	// under them.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		fail(fmt.Errorf("calls still in flight %v after the end of the run: closed the client", drain))
		for _, c := range l.Clients {
			c.Close()
		}
		<-done
	}

	var lat []time.Duration
	for i := range cs {
		lat = append(lat, cs[i].lat...)
		cs[i].lat = nil
	}
	slices.Sort(lat)
	res.Calls, res.Latencies = int64(len(lat)), lat
	if !t0.IsZero() {
		res.Elapsed = t1.Sub(t0)
	}
	res.Errors, res.FirstErr = nerrs.Load(), firstErr
	return res, nil
}
