package epollbatch

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// Batches: the requests read from one connection at once share a worker
// when their methods are quick.
//
// A hand-off to a worker costs a goroutine wake-up, and with it the
// scheduler's work and often a futex call: for a method that answers in
// a microsecond or two, more than the method. So the reactor gathers the
// requests of one read into batches and hands each batch over once; the
// worker runs its requests one after another. That is only fair to
// methods that are quick: a request behind a slow one would wait for it.
// So each method's time on a worker is kept (a running mean), and a
// request joins a batch only when its method is known and quicker than
// batchableCost; a batch stops at maxBatch requests or when the times of
// its methods add up to batchBudget. Every other request (a slow method,
// one never run yet) gets a worker of its own, as before. A method that
// turns slow is caught twice: its mean rises, and a batch that has run
// for spillAfter hands the rest to another worker when a slot is free.
//
// A run's time is the time between its start and its end, which is not
// all the method's: a stop of the world, the allocation assists the
// collector asks for while it marks, another process taking the CPU all
// count in it. So one run counts for at most maxSample in the mean.
// Without that bound a single run stretched to a millisecond lifted a
// microsecond method's mean past batchableCost for the next fifteen runs
// or so, and every request of the reads in between got a worker of its
// own: at 4 KiB with 1,024 callers, a hand-off for every two or three
// requests instead of one for every fourteen, and 370 to 410 workers
// instead of 110 to 200, each a stack for the next collection to scan.
// With the bound, a method is taken as slow after five or six slow runs
// in a row, or when about half of its runs are slow; a method slow less
// often than that stays quick, and the requests behind one of its slow
// runs in a batch wait for it.
//
// WithWorkers bounds the workers, each running one batch: a batch of
// eight quick requests takes one slot, not eight.
//
// Batches also wait for each other. Once a worker is busy, a new quick
// batch joins a queue that the busy workers take from before they go
// back to the pool, instead of waking another worker: on a loaded server
// the extra worker would only wait for a CPU, and each costs a wake-up
// and a stack for the collector to scan. Two limits keep the queue from
// holding work back when a CPU could take it: a new worker is woken when
// the queued batches add up to queueBudget of their methods' time per
// busy worker, and when the oldest of them has waited queueStall (a
// quick method that blocks, once, must not hold up the others).
const (
	batchableCost = 16 * time.Microsecond
	batchBudget   = 64 * time.Microsecond
	spillAfter    = 4 * batchBudget
	maxBatch      = 16
	maxSample     = 2 * batchableCost
	queueBudget   = time.Millisecond
	queueStall    = time.Millisecond
	// maxCosts bounds the methods whose times are kept: only methods the
	// server has are kept, and this many at most (a method registered
	// later, past the bound, never joins a batch).
	maxCosts = 1024
)

// costTable holds the running mean time of each method on a worker, read
// by the reactors without a lock and written by the workers.
type costTable struct {
	mu sync.Mutex // serialises adding a method
	m  atomic.Pointer[map[string]*atomic.Int64]
}

// batchable reports whether a request for method may share a worker,
// and what method takes.
func (ct *costTable) batchable(method []byte) (time.Duration, bool) {
	m := ct.m.Load()
	if m == nil {
		return 0, false
	}
	c := (*m)[string(method)]
	if c == nil {
		return 0, false
	}
	d := time.Duration(c.Load())
	return d, d < batchableCost
}

// note adds one run of method, which took d (counted as maxSample at
// most), to its mean (1/8 weight for the new run). A method reg does not
// serve is not kept: the names come from the peer.
func (ct *costTable) note(reg *service.Registry, method []byte, d time.Duration) {
	d = min(d, maxSample)
	if m := ct.m.Load(); m != nil {
		if c := (*m)[string(method)]; c != nil {
			old := c.Load()
			c.Store(old + (int64(d)-old)/8) // workers racing here may lose a sample: a mean, not a count
			return
		}
	}
	if !reg.Has(method) {
		return
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	var old map[string]*atomic.Int64
	if m := ct.m.Load(); m != nil {
		old = *m
	}
	if _, ok := old[string(method)]; ok || len(old) >= maxCosts {
		return
	}
	next := make(map[string]*atomic.Int64, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	c := new(atomic.Int64)
	c.Store(int64(d))
	next[string(method)] = c
	ct.m.Store(&next)
}

// batch is the batch a reactor connection is gathering (loop goroutine).
type batch struct {
	head, tail *task
	n          int
	cost       time.Duration
}

// add appends t, whose method takes cost; it reports whether the batch
// is full.
func (b *batch) add(t *task, cost time.Duration) bool {
	if b.head == nil {
		b.head = t
	} else {
		b.tail.next = t
	}
	b.tail = t
	b.n++
	b.cost += cost
	return b.n >= maxBatch || b.cost >= batchBudget
}

// take returns the batch's first task (the others linked from it),
// their number and their methods' times, and empties the batch.
func (b *batch) take() (*task, int, time.Duration) {
	t, n, cost := b.head, b.n, b.cost
	*b = batch{}
	return t, n, cost
}

// batchQueue holds the quick batches that wait for a busy worker, oldest
// first (any goroutine).
type batchQueue struct {
	mu         sync.Mutex
	head, tail *task // linked by nextBatch
	n          atomic.Int32
	cost       atomic.Int64 // the queued batches' methods' times, added up
	armed      atomic.Bool  // the stall timer is set
	timer      *time.Timer  // made by the first push that arms it; guarded by mu
}

// push queues the batch t, whose methods take cost; it reports whether
// the stall timer must be set (it was not).
func (q *batchQueue) push(t *task, cost time.Duration) (arm bool) {
	t.cost, t.queued = cost, time.Now()
	q.mu.Lock()
	if q.head == nil {
		q.head = t
	} else {
		q.tail.nextBatch = t
	}
	q.tail = t
	q.n.Add(1)
	q.cost.Add(int64(cost))
	q.mu.Unlock()
	return q.armed.CompareAndSwap(false, true)
}

// pop takes the oldest batch; nil when none waits.
func (q *batchQueue) pop() *task {
	if q.n.Load() == 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	t := q.head
	if t == nil {
		return nil
	}
	q.head, t.nextBatch = t.nextBatch, nil
	if q.head == nil {
		q.tail = nil
	}
	q.n.Add(-1)
	q.cost.Add(-int64(t.cost))
	return t
}

// waiting reports whether a batch waits.
func (q *batchQueue) waiting() bool { return q.n.Load() > 0 }

// oldest returns when the oldest batch was queued (false: none waits).
func (q *batchQueue) oldest() (time.Time, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == nil {
		return time.Time{}, false
	}
	return q.head.queued, true
}

// enqueue queues the quick batch t of n requests, whose methods take
// cost, when a busy worker of quick batches will take it; false: it needs
// a worker of its own (submit). No such worker busy (a worker on a slow
// method does not take the queue), WithWorkers workers busy (the batch
// is refused, as it was before the queue), or queueBudget of queued work
// per quick worker already: no queue.
func (s *Server) enqueue(t *task, n int, cost time.Duration) bool {
	quick := s.quickBusy.Load()
	if quick == 0 || s.running.Load() >= int32(s.opts.workers) ||
		time.Duration(s.queue.cost.Load()) >= time.Duration(quick)*queueBudget {
		return false
	}
	arm := s.queue.push(t, cost)
	s.requests.Add(int64(n))
	s.queued.Add(1)
	if testHookQueued != nil {
		testHookQueued()
	}
	// The quick workers may all have left since their last look at the
	// queue: either they see this batch (run gives the slot back, then
	// looks), or this sees them gone.
	if s.quickBusy.Load() == 0 {
		s.wakeWorker()
	}
	if arm {
		s.armStall(queueStall)
	}
	return true
}

// The tests' hooks into the hand-shake between enqueue and run (nil
// outside them): right after a batch is queued, and right after a quick
// worker gave its slot back.
var testHookQueued, testHookReleased func()

// wakeWorker hands the queue to a new worker, if a slot is free, and
// reports whether it did. When the pool is closed, no worker will come:
// the queued requests are refused.
func (s *Server) wakeWorker() bool {
	if !s.acquire() {
		return false
	}
	if err := s.invoke(nil); err != nil {
		s.refuseQueued("epollbatch: server closing")
		return false
	}
	s.handoffs.Add(1)
	return true
}

// armStall sets the stall timer to fire in d.
func (s *Server) armStall(d time.Duration) {
	q := &s.queue
	q.mu.Lock()
	if q.timer == nil {
		q.timer = time.AfterFunc(d, s.stalled)
	} else {
		q.timer.Reset(d)
	}
	q.mu.Unlock()
}

// stalled runs when the stall timer fires: a batch that has waited
// queueStall wakes another worker. While batches wait, the timer is set
// again: for when the oldest will have waited that long, or, after a
// wake-up (or when every worker is busy), a whole queueStall later, so
// that the worker just woken has the time to take the queue.
func (s *Server) stalled() {
	s.queue.armed.Store(false)
	if s.ctx.Err() != nil { // closed: stopAll refuses what waits
		return
	}
	since, ok := s.queue.oldest()
	if !ok {
		return
	}
	next := queueStall - time.Since(since)
	if next <= 0 {
		if s.wakeWorker() {
			s.stalls.Add(1)
		}
		next = queueStall
	}
	if s.queue.waiting() && s.queue.armed.CompareAndSwap(false, true) {
		s.armStall(next)
	}
}

// refuseQueued answers every queued request with msg, as a worker would
// (an error reply; a one-way request is dropped).
func (s *Server) refuseQueued(msg string) {
	for b := s.queue.pop(); b != nil; b = s.queue.pop() {
		for t := b; t != nil; {
			next := t.next
			s.overloaded.Add(1)
			s.requests.Add(-1) // counted when queued: it never reached a worker
			out := getBuf()
			if t.f.Type == protocol.TypeRequest {
				*out = service.AppendError((*out)[:0], &t.f.Header, msg)
			}
			putBuf(t.bp)
			t.r.reply(out, t.size, &t.f.Header)
			*t = task{}
			taskPool.Put(t)
			t = next
		}
	}
}

// stopQueue stops the stall timer (Close, Shutdown).
func (s *Server) stopQueue() {
	s.queue.mu.Lock()
	if s.queue.timer != nil {
		s.queue.timer.Stop()
	}
	s.queue.mu.Unlock()
}
