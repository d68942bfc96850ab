package epollbatch

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// Batches (batch.go): the requests of one read whose methods are quick
// share a worker; slow ones, and methods never run yet, get one each.

// pipelined writes the requests in one write and reads their replies.
func pipelined(t *testing.T, s *Server, reqs ...[]byte) []reply {
	t.Helper()
	nc := serverPair(t, s)
	var all []byte
	for _, r := range reqs {
		all = append(all, r...)
	}
	_, err := nc.Write(all)
	require.NoError(t, err)
	rr := &replyReader{nc: nc}
	out := make([]reply, len(reqs))
	for i := range out {
		out[i] = rr.mustNext(t)
	}
	return out
}

// With one worker, four quick requests in one write all run: they travel
// as one batch. Without batches, the three that found the worker busy
// were answered "overloaded".
func TestQuickRequestsShareAWorker(t *testing.T) {
	skipOnPortable(t)
	s, _ := newTestServer(t, WithWorkers(1))
	setCost(s, "echo.Echo", time.Microsecond)
	var reqs [][]byte
	for i := range 4 {
		reqs = append(reqs, request(uint64(i+1), "echo.Echo", []byte(fmt.Sprint("hello ", i))))
	}
	for _, r := range pipelined(t, s, reqs...) {
		require.Empty(t, r.err, "reply %d", r.seq)
		require.Equal(t, fmt.Sprint("hello ", r.seq-1), r.body)
	}
	st := s.Stats()
	require.Equal(t, int64(4), st.Requests)
	require.Equal(t, int64(1), st.Handoffs, "four requests, one hand-off")
	require.Zero(t, st.Overloaded)
}

// barrier holds each call until n calls are in at once (n is the
// argument), or fails it after two seconds: requests that share a
// worker can never all be in.
type barrier struct {
	in   atomic.Int32
	done chan struct{}
}

func (b *barrier) Meet(args []byte, reply *[]byte) error {
	var n int32
	fmt.Sscan(string(args), &n)
	if b.in.Add(1) == n {
		close(b.done)
	}
	select {
	case <-b.done:
		return nil
	case <-time.After(2 * time.Second):
		return fmt.Errorf("only %d of %d calls met", b.in.Load(), n)
	}
}

// Requests of a slow method, and of a method whose time is not known yet,
// each get a worker of their own: eight of them in one write run at once.
func TestSlowRequestsGetWorkersOfTheirOwn(t *testing.T) {
	skipOnPortable(t)
	for _, known := range []bool{false, true} {
		t.Run(fmt.Sprintf("cost known=%v", known), func(t *testing.T) {
			s, _ := newTestServer(t, WithWorkers(8))
			require.NoError(t, s.RegisterName("barrier", &barrier{done: make(chan struct{})}))
			if known {
				setCost(s, "barrier.Meet", time.Millisecond)
			}
			var reqs [][]byte
			for i := range 8 {
				reqs = append(reqs, request(uint64(i+1), "barrier.Meet", []byte("8")))
			}
			for _, r := range pipelined(t, s, reqs...) {
				require.Empty(t, r.err, "reply %d", r.seq)
			}
			require.Equal(t, int64(8), s.Stats().Handoffs)
		})
	}
}

// One run stretched by something else than the method (the collector, the
// CPU taken by another process) leaves a quick method quick: it counts for
// maxSample at most. A method that keeps being slow is taken as slow after
// a few runs, and one whose first run is slow is slow at once.
func TestStretchedRunKeepsAMethodQuick(t *testing.T) {
	reg := service.NewRegistry(nil)
	require.NoError(t, reg.RegisterName("echo", echo{}))
	require.NoError(t, reg.RegisterName("slow", slow{}))
	var ct costTable
	quick := func(method string) bool {
		_, ok := ct.batchable([]byte(method))
		return ok
	}
	for range 20 {
		ct.note(reg, []byte("echo.Echo"), time.Microsecond)
	}
	ct.note(reg, []byte("echo.Echo"), 2*time.Millisecond)
	require.True(t, quick("echo.Echo"), "one stretched run")
	ct.note(reg, []byte("echo.Echo"), 2*time.Millisecond)
	require.True(t, quick("echo.Echo"), "two in a row")
	for range 4 {
		ct.note(reg, []byte("echo.Echo"), 2*time.Millisecond)
	}
	require.False(t, quick("echo.Echo"), "six slow runs in a row: slow")

	ct.note(reg, []byte("slow.Sleep"), 2*time.Millisecond)
	require.False(t, quick("slow.Sleep"), "slow from its first run")
}

// A batch formed on a method's past speed that runs long hands the rest
// to another worker: a "quick" method that sleeps 5 ms, then three quick
// ones behind it.
func TestLongBatchSpills(t *testing.T) {
	skipOnPortable(t)
	s, _ := newTestServer(t, WithWorkers(4))
	require.NoError(t, s.RegisterName("slow", slow{}))
	setCost(s, "slow.Sleep", time.Microsecond)
	setCost(s, "echo.Echo", time.Microsecond)
	reqs := [][]byte{request(1, "slow.Sleep", []byte("5ms"))}
	for i := range 3 {
		reqs = append(reqs, request(uint64(i+2), "echo.Echo", []byte("x")))
	}
	for _, r := range pipelined(t, s, reqs...) {
		require.Empty(t, r.err, "reply %d", r.seq)
	}
	st := s.Stats()
	require.Equal(t, int64(1), st.Spills)
	require.Equal(t, int64(2), st.Handoffs, "the batch, then its rest")
	require.Equal(t, int64(4), st.Requests)
}

// A refused batch is refused request by request: each gets its
// "overloaded" reply, and each counts.
func TestRefusedBatchAnswersEachRequest(t *testing.T) {
	skipOnPortable(t)
	s, g := newTestServer(t, WithWorkers(1))
	setCost(s, "echo.Echo", time.Microsecond)
	nc := serverPair(t, s)
	_, err := nc.Write(request(1, "gate.Wait", []byte("held")))
	require.NoError(t, err)
	g.waitEntered(t, 1) // the one worker is busy
	var all []byte
	for i := range 4 {
		all = append(all, request(uint64(i+2), "echo.Echo", []byte("x"))...)
	}
	_, err = nc.Write(all)
	require.NoError(t, err)
	rr := &replyReader{nc: nc}
	for range 4 {
		r := rr.mustNext(t)
		require.Contains(t, r.err, "overloaded", "reply %d", r.seq)
	}
	g.open()
	r := rr.mustNext(t)
	require.Equal(t, uint64(1), r.seq)
	require.Empty(t, r.err)
	require.Equal(t, int64(4), s.Stats().Overloaded)
}

// The times kept are those of methods the server has: a peer naming
// thousands of methods that do not exist adds none.
func TestCostsKeptOnlyForMethodsServed(t *testing.T) {
	skipOnPortable(t)
	s, _ := newTestServer(t)
	var reqs [][]byte
	for i := range 200 {
		reqs = append(reqs, request(uint64(i+1), fmt.Sprintf("echo.Nope%d", i), nil))
	}
	reqs = append(reqs, request(201, "echo.Echo", []byte("x")))
	for _, r := range pipelined(t, s, reqs...) {
		if r.seq <= 200 {
			require.True(t, strings.Contains(r.err, "can't find method"), "reply %d: %q", r.seq, r.err)
		}
	}
	require.Equal(t, 1, costsKept(s))
}

// Once a worker is busy, a quick batch waits for it instead of waking
// another; a quick method that blocks does not hold the batch behind it
// for long: after queueStall the stall timer wakes a worker for it.
// Without the timer the echo below would wait for the gate.
func TestQueuedBatchIsNotHeldByABlockedWorker(t *testing.T) {
	skipOnPortable(t)
	s, g := newTestServer(t)
	setCost(s, "gate.Wait", time.Microsecond) // quick, as far as the server knows
	setCost(s, "echo.Echo", time.Microsecond)
	held := serverPair(t, s)
	_, err := held.Write(request(1, "gate.Wait", []byte("held")))
	require.NoError(t, err)
	g.waitEntered(t, 1) // the one busy worker is stuck

	nc := serverPair(t, s)
	_, err = nc.Write(request(2, "echo.Echo", []byte("x")))
	require.NoError(t, err)
	r := (&replyReader{nc: nc}).mustNext(t)
	require.Empty(t, r.err)
	require.Equal(t, "x", r.body)
	st := s.Stats()
	require.Equal(t, int64(1), st.Queued, "the echo waited for the busy worker")
	require.GreaterOrEqual(t, st.Stalls, int64(1), "and the stall timer woke another")
	// (more than one when the woken worker took longer than queueStall
	// to start, on a loaded machine)
	require.Equal(t, 1+st.Stalls, st.Handoffs, "the gate's worker, and those the timer woke")
	g.open()
}

// fakeReplier collects the replies of tasks made by testTask.
type fakeReplier struct {
	mu      sync.Mutex
	replies []string // "" for a reply, else its error text; "oneway" for none
}

func (f *fakeReplier) reply(out *[]byte, _ int, _ *protocol.Header) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(*out) == 0 {
		f.replies = append(f.replies, "oneway")
		return
	}
	var fr protocol.Frame
	if _, err := protocol.Parse(*out, 0, &fr); err != nil {
		panic(err)
	}
	f.replies = append(f.replies, string(fr.Error))
}

// testTask is a task for an echo request, replying to r.
func testTask(r replier, seq uint64) *task {
	wire := request(seq, "echo.Echo", []byte("x"))
	t := &task{r: r, size: len(wire)}
	t.bp = &wire
	if _, err := protocol.Parse(wire, 0, &t.f); err != nil {
		panic(err)
	}
	return t
}

// A worker takes the queued batches before it goes back to the pool, and
// gives its slot back at the end.
func TestWorkerRunsTheQueue(t *testing.T) {
	s, _ := newTestServer(t)
	f := &fakeReplier{}
	s.queue.push(testTask(f, 2), time.Microsecond)
	s.queue.push(testTask(f, 3), time.Microsecond)
	require.True(t, s.acquire())
	first := testTask(f, 1)
	first.quick = true
	s.run(first)
	require.Equal(t, []string{"", "", ""}, f.replies)
	require.False(t, s.queue.waiting())
	require.Zero(t, s.running.Load())
	require.Zero(t, s.queue.cost.Load())
	require.Zero(t, s.quickBusy.Load())
}

// When a batch joins the queue: a worker of quick batches is busy (not
// only one on a slow method), fewer than WithWorkers workers are, and
// less than queueBudget of work per quick worker waits already.
func TestEnqueueBounds(t *testing.T) {
	s, _ := newTestServer(t, WithWorkers(3))
	s.queue.armed.Store(true) // no stall timer: it would start a real worker
	f := &fakeReplier{}
	require.False(t, s.enqueue(testTask(f, 1), 1, time.Microsecond), "no worker busy: a worker of its own")
	s.running.Store(1)
	require.False(t, s.enqueue(testTask(f, 1), 1, time.Microsecond), "a worker busy on a slow method does not take the queue")
	s.running.Store(3)
	s.quickBusy.Store(1)
	require.False(t, s.enqueue(testTask(f, 1), 1, time.Microsecond), "WithWorkers busy: refused, as without the queue")
	s.running.Store(2)
	s.quickBusy.Store(2)
	require.True(t, s.enqueue(testTask(f, 1), 1, 2*queueBudget))
	require.False(t, s.enqueue(testTask(f, 2), 1, time.Microsecond), "two quick workers, 2 ms of work queued already")
	for s.queue.pop() != nil {
	}
	s.running.Store(0)
	s.quickBusy.Store(0)
	require.Empty(t, f.replies)
}

// Many connections of quick requests at once, with the stall timer off:
// every batch queued is taken by a worker (none is left behind because
// the workers left just as it was queued).
func TestQueueLosesNoBatch(t *testing.T) {
	skipOnPortable(t)
	s, _ := newTestServer(t, WithWorkers(4))
	s.queue.armed.Store(true) // never armed: only the workers take the queue
	setCost(s, "echo.Echo", time.Microsecond)
	const conns, rounds, burst = 16, 20, 8
	var wg sync.WaitGroup
	for c := range conns {
		nc := serverPair(t, s)
		wg.Go(func() {
			rr := &replyReader{nc: nc}
			for r := range rounds {
				// The running mean of a slow -race run could take echo
				// past batchableCost: it stays quick here.
				setCost(s, "echo.Echo", time.Microsecond)
				var all []byte
				for i := range burst {
					all = append(all, request(uint64(r*burst+i+1), "echo.Echo", []byte(fmt.Sprint(c)))...)
				}
				if _, err := nc.Write(all); err != nil {
					t.Error(err)
					return
				}
				for range burst {
					rep, err := rr.next(5 * time.Second)
					if err != nil {
						t.Errorf("connection %d, round %d: %v", c, r, err)
						return
					}
					if rep.err != "" && !strings.Contains(rep.err, "overloaded") {
						t.Errorf("connection %d: %s", c, rep.err)
					}
				}
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	require.Positive(t, st.Queued, "the queue was used")
	require.Zero(t, st.Stalls)
}

// The hand-shake, one side at a time: a batch queued just after the
// last quick worker looked at the queue is seen by the reactor that
// queued it, which wakes a worker; one queued after the worker gave its
// slot back but before it looked is seen by the worker.
func TestQueueHandshake(t *testing.T) {
	t.Run("the reactor sees the workers gone", func(t *testing.T) {
		s, _ := newTestServer(t)
		s.queue.armed.Store(true) // no stall timer
		f := &fakeReplier{}
		s.running.Store(1)
		s.quickBusy.Store(1)      // a quick worker, about to leave
		testHookQueued = func() { // it leaves, having found the queue empty
			s.quickBusy.Store(0)
			s.running.Store(0)
		}
		defer func() { testHookQueued = nil }()
		require.True(t, s.enqueue(testTask(f, 1), 1, time.Microsecond))
		require.Eventually(t, func() bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return len(f.replies) == 1
		}, 2*time.Second, time.Millisecond, "the batch is left in the queue")
		require.Equal(t, int64(1), s.Stats().Handoffs, "the worker the reactor woke")
	})
	t.Run("the worker sees the batch", func(t *testing.T) {
		s, _ := newTestServer(t)
		s.queue.armed.Store(true)
		f := &fakeReplier{}
		testHookReleased = func() { // queued by a reactor that saw the worker busy
			testHookReleased = nil
			s.queue.push(testTask(f, 2), time.Microsecond)
		}
		defer func() { testHookReleased = nil }()
		first := testTask(f, 1)
		first.quick = true
		require.True(t, s.acquire())
		s.run(first)
		require.Equal(t, []string{"", ""}, f.replies, "the worker ran the batch queued as it left")
		require.Zero(t, s.running.Load())
	})
}

// Close answers what still waits in the queue "closing", and the
// requests it never ran leave the count of requests handed to workers.
func TestCloseRefusesTheQueue(t *testing.T) {
	s, _ := newTestServer(t)
	s.queue.armed.Store(true) // no stall timer
	s.running.Store(1)
	s.quickBusy.Store(1) // a quick worker that will not come back for it
	f := &fakeReplier{}
	a, b := testTask(f, 1), testTask(f, 2)
	a.next = b
	require.True(t, s.enqueue(a, 2, time.Microsecond))
	require.Equal(t, int64(2), s.Stats().Requests)
	s.running.Store(0)
	s.quickBusy.Store(0)
	require.NoError(t, s.Close())
	require.Equal(t, []string{"epollbatch: server closing", "epollbatch: server closing"}, f.replies)
	st := s.Stats()
	require.Zero(t, st.Requests)
	require.Equal(t, int64(2), st.Overloaded)
	require.Equal(t, int64(1), st.Queued)
	require.False(t, s.queue.waiting())
}

// With the pool closed no worker will come: what waits in the queue is
// answered "closing" (a one-way request is dropped).
func TestQueueRefusedWhenThePoolIsClosed(t *testing.T) {
	s, _ := newTestServer(t)
	require.NoError(t, s.Close())
	f := &fakeReplier{}
	a, b := testTask(f, 1), testTask(f, 2)
	b.f.Type = protocol.TypeOneway
	a.next = b
	s.queue.push(a, time.Microsecond)
	s.wakeWorker()
	require.Equal(t, []string{"epollbatch: server closing", "oneway"}, f.replies)
	require.Zero(t, s.running.Load())
}
