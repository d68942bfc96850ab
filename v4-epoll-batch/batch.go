package epollbatch

import (
	"sync"
	"sync/atomic"
	"time"

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
// WithWorkers bounds the workers, each running one batch: a batch of
// eight quick requests takes one slot, not eight.
const (
	batchableCost = 16 * time.Microsecond
	batchBudget   = 64 * time.Microsecond
	spillAfter    = 4 * batchBudget
	maxBatch      = 16
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

// note adds one run of method, which took d, to its mean (1/8 weight for
// the new run). A method reg does not serve is not kept: the names come
// from the peer.
func (ct *costTable) note(reg *service.Registry, method []byte, d time.Duration) {
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

// take returns the batch's first task (the others linked from it) and
// their number, and empties the batch.
func (b *batch) take() (*task, int) {
	t, n := b.head, b.n
	*b = batch{}
	return t, n
}
