package soak

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	pipeline "github.com/rpcsteps/rpcsteps/v3-pipeline"
)

var (
	soakDuration = flag.Duration("soak.duration", 2*time.Second, "how long TestSoak soaks each version")
	soakSeed     = flag.Uint64("soak.seed", 0, "seed of the faults and payloads (0: one from the clock, printed in the report)")
	soakGrace    = flag.Duration("soak.grace", 250*time.Millisecond, "how long a call may outlive its deadline")
	soakCallers  = flag.Int("soak.callers", 64, "caller goroutines per version")
)

const (
	callTimeout = 2 * time.Second  // the deadline of most calls
	maxPayload  = 4 << 10          // most payloads are up to this
	bigPayload  = 64 << 10         // one in 32 up to this: frames of many pieces
	settle      = 10 * time.Second // how long goroutines and heap may take to come back
	heapMargin  = 4 << 20          // how far above its baseline the heap may stay
)

// faults are the proxy's faults in the soak. At the rates of a 2-core
// machine under -race (some 10,000 calls a second) a connection lives a
// few hundred milliseconds, and carries a few hundred calls.
func faults(seed uint64) Faults {
	return Faults{
		Seed:             seed,
		Split:            true,
		DelayProbability: 0.02,
		MaxDelay:         50 * time.Millisecond,
		ResetProbability: 1.0 / 50_000,
		MeanTimeToReset:  500 * time.Millisecond,
	}
}

// rpcServer is what the soak needs of a version's Server.
type rpcServer interface {
	RegisterName(name string, rcvr any) error
	Serve(ln net.Listener) error
	Close() error
}

// rpcClient is what the soak needs of a version's Client.
type rpcClient interface {
	Call(ctx context.Context, serviceMethod string, args, reply any) error
	Close() error
}

// version is one implementation under soak.
type version struct {
	name      string
	newServer func() rpcServer
	// dial returns the client of the callers with an even number (raw set:
	// codec.Raw, two connections, a short ping interval) or of those with
	// an odd one (the defaults: Gob, one connection).
	dial func(addr string, raw bool) (rpcClient, error)
	// serverError reports whether err is a ServerError, and its text.
	serverError                  func(err error) (string, bool)
	errShutdown, errServerClosed error
}

// versions are the versions TestSoak soaks; soak_linux_test.go adds v4.
var versions = []version{{
	name:      "v3",
	newServer: func() rpcServer { return pipeline.NewServer() },
	dial: func(addr string, raw bool) (rpcClient, error) {
		var opts []pipeline.ClientOption
		if raw {
			opts = append(opts, pipeline.WithCodec(codec.Raw), pipeline.WithConns(2), pipeline.WithPingInterval(250*time.Millisecond))
		}
		c, err := pipeline.Dial("tcp", addr, opts...)
		if err != nil {
			return nil, err
		}
		return c, nil
	},
	serverError: func(err error) (string, bool) {
		var se pipeline.ServerError
		ok := errors.As(err, &se)
		return string(se), ok
	},
	errShutdown:     pipeline.ErrShutdown,
	errServerClosed: pipeline.ErrServerClosed,
}}

// A payload starts with a header that says whose it is:
//
//	[0:4]   the caller's number
//	[4:12]  the caller's call number
//	[12:14] how long Echo.Sleep sleeps, in milliseconds
//	[14:16] magic
//
// and goes on with random bytes, so that a reply can be matched to its
// call, byte for byte, and a wrong one to the call it belonged to.
const (
	headerLen = 16
	magic     = 0x50a4
)

func appendHeader(b []byte, caller uint32, n uint64, sleep time.Duration) []byte {
	b = binary.BigEndian.AppendUint32(b, caller)
	b = binary.BigEndian.AppendUint64(b, n)
	b = binary.BigEndian.AppendUint16(b, uint16(sleep/time.Millisecond))
	return binary.BigEndian.AppendUint16(b, magic)
}

// parseHeader reads a payload's header; ok is false if it has none.
func parseHeader(b []byte) (caller uint32, n uint64, sleep time.Duration, ok bool) {
	if len(b) < headerLen || binary.BigEndian.Uint16(b[14:]) != magic {
		return 0, 0, 0, false
	}
	return binary.BigEndian.Uint32(b), binary.BigEndian.Uint64(b[4:]),
		time.Duration(binary.BigEndian.Uint16(b[12:])) * time.Millisecond, true
}

// failText is the error Echo.Fail returns for a payload.
func failText(b []byte) string {
	caller, n, _, ok := parseHeader(b)
	if !ok {
		return fmt.Sprintf("fail: no header in %d bytes", len(b))
	}
	return fmt.Sprintf("fail c%d #%d", caller, n)
}

// echoService is the service of the soak, registered as "Echo". Each
// method answers with what it was sent (Fail: with an error naming it), so
// that a caller can tell its own reply from any other.
type echoService struct{}

// Echo replies with a copy of args.
func (echoService) Echo(args []byte, reply *[]byte) error {
	*reply = append((*reply)[:0], args...)
	return nil
}

// Sleep sleeps as long as the payload's header says (or until the caller
// gives up), then replies with a copy of args. Copying after the sleep
// finds a server that let the bytes of args be reused meanwhile.
func (echoService) Sleep(ctx context.Context, args []byte, reply *[]byte) error {
	_, _, d, _ := parseHeader(args)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	*reply = append((*reply)[:0], args...)
	return nil
}

// Fail returns an error whose text names the payload's call.
func (echoService) Fail(args []byte, reply *[]byte) error {
	return errors.New(failText(args))
}

// counts are the outcomes of calls: a caller's, then a version's.
type counts struct {
	calls    int64
	ok       int64 // the exact reply, or (Fail) the exact ServerError
	deadline int64 // errors.Is(err, context.DeadlineExceeded or Canceled)
	conn     int64 // the connection broke: reset, EOF, closed, ...
	dial     int64 // connecting again failed (or failed lately: the client's backoff)
	server   int64 // a ServerError other than the one Fail returns
	other    int64
	wrong    int64         // a reply (or ServerError) that was not this call's
	late     int64         // calls that outlived their deadline by more than the grace
	worst    time.Duration // the most any call outlived its deadline
	excused  int64         // calls past the grace, but only because the process stalled
	short    int64         // calls made with a short deadline (1-30 ms)

	samples map[string]int // error texts of kind server and other, by count
	wrongs  []string       // the first few wrong replies and late calls, described
}

func (c *counts) add(o *counts) {
	c.calls += o.calls
	c.ok += o.ok
	c.deadline += o.deadline
	c.conn += o.conn
	c.dial += o.dial
	c.server += o.server
	c.other += o.other
	c.wrong += o.wrong
	c.late += o.late
	c.short += o.short
	c.excused += o.excused
	c.worst = max(c.worst, o.worst)
	for k, n := range o.samples {
		c.sample(k, n)
	}
	for _, w := range o.wrongs {
		c.note(w)
	}
}

func (c *counts) sample(text string, n int) {
	if c.samples == nil {
		c.samples = make(map[string]int)
	}
	text = durationRE.ReplaceAllString(portRE.ReplaceAllString(text, ":<port>"), "<d>")
	if len(text) > 160 {
		text = text[:160] + "..."
	}
	if _, ok := c.samples[text]; ok || len(c.samples) < 20 {
		c.samples[text] += n
	}
}

func (c *counts) note(s string) {
	if len(c.wrongs) < 20 {
		c.wrongs = append(c.wrongs, s)
	}
}

// The samples of error texts are counted with ports and durations taken
// out: "next attempt in 8ms" and "in 9ms" are one text.
var (
	portRE     = regexp.MustCompile(`:[0-9]{2,5}\b`)
	durationRE = regexp.MustCompile(`\b[0-9]+(\.[0-9]+)?(ns|µs|ms|s|m)\b`)
)

// isDialError reports whether err says that connecting failed.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial" || strings.Contains(err.Error(), "dial tcp")
}

// isConnError reports whether err says that the connection broke.
func isConnError(err error) bool {
	for _, target := range []error{syscall.ECONNRESET, syscall.EPIPE, syscall.ECONNREFUSED,
		syscall.ECONNABORTED, io.EOF, io.ErrUnexpectedEOF, net.ErrClosed} {
		if errors.Is(err, target) {
			return true
		}
	}
	msg := err.Error()
	for _, s := range []string{"connection reset", "broken pipe", "use of closed", "connection closed", "connection refused", "EOF"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// row is one version's line in the report.
type row struct {
	version  string
	seed     uint64
	duration time.Duration
	counts
	proxy                Stats
	stall                time.Duration // the longest stall of the process the meter saw
	gorBase, gorEnd      int
	heapBase, heapEnd    uint64
	heapSettled, settled bool
}

const tableHeader = "ver seed                dur    calls       ok deadline   conn   dial srverr other wrong late excused  worst  stall short | pconns resets   splits  delays    MiB | goroutines  heap MiB"

func (r *row) String() string {
	return strings.TrimRight(fmt.Sprintf("%-3s %#016x %4s %8d %8d %8d %6d %6d %6d %5d %5d %4d %7d %6s %6s %5d | %6d %6d %8d %7d %6.0f | %4d->%-5d %4.1f->%-4.1f",
		r.version, r.seed, r.duration, r.calls, r.ok, r.deadline, r.conn, r.dial, r.server, r.other, r.wrong, r.late,
		r.excused, r.worst.Round(time.Millisecond), r.stall.Round(time.Millisecond), r.short,
		r.proxy.Conns, r.proxy.Resets, r.proxy.Splits, r.proxy.Delays, float64(r.proxy.Bytes)/(1<<20),
		r.gorBase, r.gorEnd, float64(r.heapBase)/(1<<20), float64(r.heapEnd)/(1<<20)), " ")
}

// TestSoak soaks each version for -soak.duration through a faulty proxy.
// See the package comment.
func TestSoak(t *testing.T) {
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	var rows []*row
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			r := &row{version: v.name, seed: seed, duration: *soakDuration}
			rows = append(rows, r) // in the table even if soak stops early
			soak(t, v, r)
			texts := make([]string, 0, len(r.samples))
			for text := range r.samples {
				texts = append(texts, text)
			}
			sort.Slice(texts, func(i, j int) bool { return r.samples[texts[i]] > r.samples[texts[j]] })
			for _, text := range texts {
				t.Logf("%s: %d x %q", v.name, r.samples[text], text)
			}
			if r.ok == 0 {
				t.Logf("%s: WARNING: no call succeeded", v.name)
			}
		})
	}
	lines := []string{tableHeader}
	for _, r := range rows {
		lines = append(lines, r.String())
	}
	t.Logf("soak, -soak.duration=%v -soak.seed=%#x -soak.grace=%v, %d callers, GOMAXPROCS %d:\n%s",
		*soakDuration, seed, *soakGrace, *soakCallers, runtime.GOMAXPROCS(0), strings.Join(lines, "\n"))
	if path := os.Getenv("SOAK_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		require.NoError(t, err)
		_, err = fmt.Fprintf(f, "# %s %s GOMAXPROCS=%d -soak.duration=%v -soak.seed=%#x -soak.grace=%v callers=%d failed=%v\n%s\n",
			time.Now().UTC().Format(time.RFC3339), runtime.Version(), runtime.GOMAXPROCS(0),
			*soakDuration, seed, *soakGrace, *soakCallers, t.Failed(), strings.Join(lines, "\n"))
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
}

// soak runs one version: server, proxy, clients, callers; then it closes
// them all and checks that goroutines and heap come back. It fills r.
func soak(t *testing.T, v version, r *row) {
	seed := r.seed
	r.gorBase = runtime.NumGoroutine()
	r.heapBase = heapInUse()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := v.newServer()
	require.NoError(t, srv.RegisterName("Echo", echoService{}))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	proxy, err := NewProxy(ln.Addr().String(), faults(seed))
	require.NoError(t, err)
	var clients [2]rpcClient
	for i := range clients {
		clients[i], err = v.dial(proxy.Addr(), i == 0)
		require.NoError(t, err)
	}

	// The callers, and the meter that tells their lateness from the
	// machine's.
	meter := startStallMeter()
	defer meter.stop()
	run, stop := context.WithTimeout(context.Background(), *soakDuration)
	defer stop()
	callers := make([]*caller, *soakCallers)
	var wg sync.WaitGroup
	for i := range callers {
		cl := &caller{
			t:      t,
			v:      &v,
			id:     uint32(i),
			client: clients[i%2],
			rand:   rand.New(rand.NewPCG(seed, uint64(1000+i))),
		}
		callers[i] = cl
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl.loop(run)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	stopWatch := watchLate(callers)
	defer stopWatch()

	// Every call ends by its deadline (plus grace), so once the run ends
	// the callers end within callTimeout: longer is a hang.
	<-run.Done()
	select {
	case <-done:
	case <-time.After(callTimeout + *soakGrace + 5*time.Second):
		var stuck []string
		for _, cl := range callers {
			if d := cl.current.Load(); d != nil {
				stuck = append(stuck, fmt.Sprintf("caller %d: %s, started %v ago", cl.id, d.what, time.Since(d.start).Round(time.Millisecond)))
			}
		}
		t.Errorf("%s: calls hang past their deadline (seed %#x):\n%s\n%s", v.name, seed, strings.Join(stuck, "\n"), goroutines())
	}

	// Close everything, and wait for it (stuck callers, if any, must end
	// at Close).
	for _, c := range clients {
		require.NoError(t, c.Close())
	}
	select {
	case <-done:
	case <-time.After(settle):
		t.Fatalf("%s: calls still hang after the clients' Close (seed %#x)\n%s", v.name, seed, goroutines())
	}
	require.NoError(t, srv.Close())
	select {
	case err := <-served:
		require.ErrorIs(t, err, v.errServerClosed)
	case <-time.After(settle):
		t.Fatalf("%s: Serve did not return after Close", v.name)
	}
	require.NoError(t, proxy.Close())
	r.proxy = proxy.Stats()
	stopWatch()
	meter.stop()
	r.stall = meter.worst

	for _, cl := range callers {
		// A call is late only by the time the process ran: a machine
		// busy with others (or a collection) can stall every goroutine
		// for a while, the library's included.
		for _, l := range cl.lates {
			if stalled := meter.overlap(l.dl, l.end); l.end.Sub(l.dl)-stalled > *soakGrace {
				cl.late++
				note := fmt.Sprintf("%s; the process stalled %v of that time (worst stall of the run %v)",
					l.what, stalled.Round(time.Millisecond), meter.worst.Round(time.Millisecond))
				if st, ok := cl.stacks[l.n]; ok {
					note += "; its stack while it was late:\n" + st
				}
				cl.note(note)
			} else {
				cl.excused++
			}
		}
		r.add(&cl.counts)
	}
	for _, w := range r.wrongs {
		t.Errorf("%s (seed %#x): %s", v.name, seed, w)
	}
	if r.wrong > 0 || r.late > 0 {
		t.Errorf("%s (seed %#x): %d wrong replies, %d calls past their deadline by more than %v (worst %v)",
			v.name, seed, r.wrong, r.late, *soakGrace, r.worst)
	}

	// Goroutines and heap come back.
	deadline := time.Now().Add(settle)
	for {
		r.gorEnd = runtime.NumGoroutine()
		r.heapEnd = heapInUse()
		r.settled = r.gorEnd <= r.gorBase
		r.heapSettled = r.heapEnd <= r.heapBase+heapMargin
		if r.settled && r.heapSettled || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !r.settled {
		t.Errorf("%s (seed %#x): goroutine leak: %d goroutines %v after Close, %d before\n%s",
			v.name, seed, r.gorEnd, settle, r.gorBase, goroutines())
	}
	if !r.heapSettled {
		t.Errorf("%s (seed %#x): heap leak: %.1f MiB in use %v after Close, %.1f MiB before (margin %d MiB)",
			v.name, seed, float64(r.heapEnd)/(1<<20), settle, float64(r.heapBase)/(1<<20), heapMargin>>20)
	}
}

// callDesc is the call a caller is in, for the report of a hang.
type callDesc struct {
	what      string
	n         uint64
	start, dl time.Time
}

// caller is one of the goroutines making calls.
type caller struct {
	t      *testing.T
	v      *version
	id     uint32
	client rpcClient
	rand   *rand.Rand
	n      uint64

	current atomic.Pointer[callDesc] // nil between calls
	lates   []lateCall               // calls that returned past deadline+grace
	gid     string                   // "goroutine 123 ", the caller's, for stacks

	mu     sync.Mutex
	stacks map[uint64]string // call number: its stack, taken while it was late
	counts
}

// lateCall is a call that returned more than the grace after its deadline.
type lateCall struct {
	what    string
	n       uint64
	dl, end time.Time
}

// loop makes calls until run ends.
func (c *caller) loop(run context.Context) {
	defer func() {
		if p := recover(); p != nil {
			c.t.Errorf("%s: caller %d panicked: %v\n%s", c.v.name, c.id, p, goroutines())
		}
	}()
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	if i := bytes.IndexByte(buf, '['); i > 0 {
		c.gid = string(buf[:i]) // "goroutine 123 "
	}
	for run.Err() == nil {
		c.call()
	}
}

// call makes one call, and checks it.
func (c *caller) call() {
	r := c.rand
	c.n++
	method, sleep := "Echo.Echo", time.Duration(0)
	switch p := r.IntN(100); {
	case p < 15:
		method, sleep = "Echo.Sleep", time.Duration(1+r.IntN(10))*time.Millisecond
		if r.IntN(20) == 0 {
			sleep = time.Duration(50+r.IntN(150)) * time.Millisecond
		}
	case p < 20:
		method = "Echo.Fail"
	}
	timeout := callTimeout
	if r.IntN(16) == 0 {
		timeout = time.Duration(1+r.IntN(30)) * time.Millisecond
		c.short++
	}
	size := headerLen + r.IntN(maxPayload-headerLen+1)
	if r.IntN(32) == 0 {
		size = headerLen + r.IntN(bigPayload-headerLen+1)
	}
	// A fresh payload each call: with Go's calls a library may hold on to
	// args, so the caller does not reuse them.
	payload := appendHeader(make([]byte, 0, size), c.id, c.n, sleep)
	for len(payload)+8 <= size {
		payload = binary.LittleEndian.AppendUint64(payload, r.Uint64())
	}
	for len(payload) < size {
		payload = append(payload, byte(r.Uint32()))
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	what := fmt.Sprintf("%s #%d, %d bytes, timeout %v", method, c.n, size, timeout)
	c.current.Store(&callDesc{what: what, n: c.n, start: time.Now(), dl: dl})
	var reply []byte
	err := c.client.Call(ctx, method, payload, &reply)
	end := time.Now()
	c.current.Store(nil)

	c.calls++
	over := end.Sub(dl)
	c.worst = max(c.worst, over)
	if over > *soakGrace { // judged at the end of the run: see stallMeter
		c.lates = append(c.lates, lateCall{
			n:    c.n,
			what: fmt.Sprintf("caller %d: %s returned %v after its deadline (err: %v)", c.id, what, over.Round(time.Millisecond), err),
			dl:   dl, end: end,
		})
	}

	switch {
	case err == nil && method != "Echo.Fail":
		if bytes.Equal(reply, payload) {
			c.ok++
			return
		}
		c.wrong++
		c.note(fmt.Sprintf("caller %d: %s: wrong reply: %s", c.id, what, describe(reply, payload)))
		return
	case err == nil:
		c.wrong++
		c.note(fmt.Sprintf("caller %d: %s returned nil (reply %s)", c.id, what, describe(reply, nil)))
		return
	}
	if reply != nil {
		c.wrong++
		c.note(fmt.Sprintf("caller %d: %s failed (%v) but wrote into reply: %s", c.id, what, err, describe(reply, payload)))
	}
	if text, ok := c.v.serverError(err); ok {
		switch want := failText(payload); {
		case method == "Echo.Fail" && text == want:
			c.ok++
		case strings.HasPrefix(text, "fail "):
			c.wrong++
			c.note(fmt.Sprintf("caller %d: %s: another call's ServerError %q (want %q)", c.id, what, text, want))
		default:
			c.server++
			c.sample("ServerError: "+text, 1)
		}
		return
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		c.deadline++
	case errors.Is(err, c.v.errShutdown):
		c.other++ // no client is closed while callers run
		c.sample(err.Error(), 1)
	case isDialError(err):
		c.dial++
		c.sample(err.Error(), 1)
	case isConnError(err):
		c.conn++
	default:
		c.other++
		c.sample(err.Error(), 1)
	}
}

// describe says how got differs from want (nil: got should not be).
func describe(got, want []byte) string {
	s := fmt.Sprintf("%d bytes", len(got))
	if caller, n, _, ok := parseHeader(got); ok {
		s += fmt.Sprintf(", the payload of caller %d's call #%d", caller, n)
	} else {
		s += ", no payload header"
	}
	if want != nil {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		s += fmt.Sprintf("; want %d bytes; first difference at byte %d", len(want), i)
	}
	return s
}

// watchLate looks, every 20 ms, for calls already past their deadline by
// more than the grace, and keeps the stack of each (of the first
// maxStacks), with those of the library's goroutines at that moment, so
// that a late call can be reported with where it was waiting. It returns
// the function that stops it.
func watchLate(callers []*caller) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		taken := 0
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		buf := make([]byte, 1<<20)
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			var all []byte
			for _, c := range callers {
				d := c.current.Load()
				if d == nil || time.Since(d.dl) <= *soakGrace || c.gid == "" || taken >= maxStacks {
					continue
				}
				c.mu.Lock()
				_, seen := c.stacks[d.n]
				c.mu.Unlock()
				if seen {
					continue
				}
				if all == nil {
					all = buf[:runtime.Stack(buf, true)]
				}
				st := fmt.Sprintf("(%v past its deadline) no stack found", time.Since(d.dl).Round(time.Millisecond))
				if i := bytes.Index(all, []byte(c.gid+"[")); i >= 0 {
					end := bytes.Index(all[i:], []byte("\n\n"))
					if end < 0 {
						end = len(all) - i
					}
					st = fmt.Sprintf("(%v past its deadline)\n%s\n-- the library's goroutines then:\n%s",
						time.Since(d.dl).Round(time.Millisecond), all[i:i+end], libraryStacks(all))
				}
				c.mu.Lock()
				if c.stacks == nil {
					c.stacks = make(map[uint64]string)
				}
				c.stacks[d.n] = st
				c.mu.Unlock()
				taken++
			}
		}
	}()
	return func() {
		select {
		case <-quit:
		default:
			close(quit)
		}
		<-done
	}
}

// maxStacks bounds the stacks watchLate keeps.
const maxStacks = 200

// libraryStacks returns the stacks in all (a dump of runtime.Stack) of the
// goroutines running in a version's package: those not parked in a
// select or a channel operation first (a lock holder is among them), cut
// to 32 KiB. Stacks alike (the same frames) are given once, with a count.
func libraryStacks(all []byte) []byte {
	type group struct {
		stack []byte
		n     int
	}
	var busy, parked []*group
	seen := make(map[string]*group)
	for g := range bytes.SplitSeq(all, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("rpcsteps/v")) || bytes.Contains(g, []byte("soak.(*caller)")) {
			continue
		}
		// The key: the frames without the goroutine's header and the
		// arguments' values.
		_, frames, _ := bytes.Cut(g, []byte("\n"))
		key := string(argsRE.ReplaceAll(frames, nil))
		if gr := seen[key]; gr != nil {
			gr.n++
			continue
		}
		gr := &group{stack: g, n: 1}
		seen[key] = gr
		if bytes.Contains(g, []byte("[select")) || bytes.Contains(g, []byte("[chan receive")) || bytes.Contains(g, []byte("[IO wait")) {
			parked = append(parked, gr)
		} else {
			busy = append(busy, gr)
		}
	}
	var out []byte
	for _, gr := range append(busy, parked...) {
		if gr.n > 1 {
			out = fmt.Appendf(out, "(%d goroutines like this one)\n", gr.n)
		}
		out = append(append(out, gr.stack...), "\n\n"...)
		if len(out) > 32<<10 {
			return append(out[:32<<10], "\n... (cut)"...)
		}
	}
	return out
}

// argsRE matches the arguments and offsets in a stack's frames.
var argsRE = regexp.MustCompile(`\(0x[0-9a-f, .{}?]*\)|\+0x[0-9a-f]+| in goroutine [0-9]+`)

// stallMeter measures how long the process is stalled (busy with others,
// collecting, or its run queues long): a few goroutines that wait tick
// after tick the way a call waits for its deadline (a timer starts a
// goroutine, which wakes the waiter through a channel), and note each
// wake-up late by more than stallMin. A call that returns late while the
// process was stalled is not the library's fault, not for the stalled
// part.
type stallMeter struct {
	quit   chan struct{}
	wg     sync.WaitGroup
	probes [stallProbes][]interval // each probe's, until wg is done
	stalls []interval              // all, merged, once stopped
	worst  time.Duration
}

type interval struct{ from, to time.Time }

const (
	stallProbes = 3
	stallTick   = 5 * time.Millisecond
	stallMin    = 10 * time.Millisecond
)

func startStallMeter() *stallMeter {
	m := &stallMeter{quit: make(chan struct{})}
	for i := range m.probes {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			woken := make(chan struct{}, 1)
			wake := func() { woken <- struct{}{} }
			for {
				due := time.Now().Add(stallTick)
				t := time.AfterFunc(stallTick, wake)
				select {
				case <-m.quit:
					if !t.Stop() {
						<-woken
					}
					return
				case <-woken:
				}
				if now := time.Now(); now.Sub(due) > stallMin {
					m.probes[i] = append(m.probes[i], interval{due, now})
				}
			}
		}()
	}
	return m
}

// stop stops the meter and merges what its probes saw; then its figures
// can be read. It may be called more than once.
func (m *stallMeter) stop() {
	select {
	case <-m.quit:
		m.wg.Wait()
		return
	default:
		close(m.quit)
	}
	m.wg.Wait()
	var all []interval
	for _, p := range m.probes {
		all = append(all, p...)
	}
	slices.SortFunc(all, func(a, b interval) int { return a.from.Compare(b.from) })
	for _, s := range all {
		if n := len(m.stalls); n > 0 && !s.from.After(m.stalls[n-1].to) {
			m.stalls[n-1].to = later(m.stalls[n-1].to, s.to)
		} else {
			m.stalls = append(m.stalls, s)
		}
	}
	for _, s := range m.stalls {
		m.worst = max(m.worst, s.to.Sub(s.from))
	}
}

// overlap returns how long, between from and to, the process was stalled.
func (m *stallMeter) overlap(from, to time.Time) time.Duration {
	var d time.Duration
	for _, s := range m.stalls {
		if lo, hi := later(s.from, from), earlier(s.to, to); hi.After(lo) {
			d += hi.Sub(lo)
		}
	}
	return d
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// heapInUse returns the bytes of the heap in use after a collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC() // sync.Pools are emptied over two cycles
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// goroutines returns a dump of every goroutine, cut to 64 KiB.
func goroutines() string {
	var b bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&b, 1)
	if b.Len() > 64<<10 {
		b.Truncate(64 << 10)
		b.WriteString("\n... (cut)")
	}
	return b.String()
}

// TestProxy checks the proxy itself: bytes cross it unchanged, in order,
// however they are split and delayed; a reset is seen by both peers; and
// Close ends every connection.
func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() { // an echo server
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()

	t.Run("copy", func(t *testing.T) {
		p, err := NewProxy(ln.Addr().String(), Faults{Seed: 1, Split: true, DelayProbability: 0.01, MaxDelay: 5 * time.Millisecond})
		require.NoError(t, err)
		defer p.Close()
		c, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		defer c.Close()
		sent := make([]byte, 1<<20)
		r := rand.New(rand.NewPCG(1, 2))
		for i := range sent {
			sent[i] = byte(r.Uint32())
		}
		go func() {
			c.Write(sent)
			c.(*net.TCPConn).CloseWrite() // the half-close crosses the proxy too
		}()
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		require.True(t, bytes.Equal(sent, got), "the bytes changed on the way")
		st := p.Stats()
		require.Equal(t, int64(1), st.Conns)
		require.Equal(t, int64(2*len(sent)), st.Bytes)
		require.Positive(t, st.Splits)
		require.Zero(t, st.Resets)
	})

	t.Run("reset", func(t *testing.T) {
		p, err := NewProxy(ln.Addr().String(), Faults{Seed: 1, ResetProbability: 1})
		require.NoError(t, err)
		defer p.Close()
		c, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("hello"))
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
		require.ErrorIs(t, err, syscall.ECONNRESET)
		require.Equal(t, int64(1), p.Stats().Resets)
	})

	t.Run("close", func(t *testing.T) {
		p, err := NewProxy(ln.Addr().String(), Faults{})
		require.NoError(t, err)
		c, err := net.Dial("tcp", p.Addr())
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("ping"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, make([]byte, 4))
		require.NoError(t, err)
		require.NoError(t, p.Close())
		require.NoError(t, p.Close(), "a second Close")
		require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF)
		_, err = net.Dial("tcp", p.Addr())
		require.Error(t, err, "the listener is closed")
	})
}
