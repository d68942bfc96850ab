// Package ring is a bounded multi-producer single-consumer queue without
// locks: many goroutines add values with [Ring.Put], one goroutine takes
// them out in batches with [Ring.Drain]. v4's reactors use it to take
// replies from the workers (and requests from callers): the connection's
// reactor drains the ring and writes a whole batch with one writev.
//
// # Algorithm
//
// This is Dmitry Vyukov's bounded queue (the same idea as the LMAX
// Disruptor's sequence numbers). The ring is an array of capacity slots,
// capacity a power of two, and two counters that only grow: tail, the next
// position a producer will claim, and head, the next position the consumer
// will read. Position p lives in slot p & (capacity-1). Each slot carries an
// atomic sequence number, seq, that says whose turn it is:
//
//	seq == p             free: the producer of position p may write it
//	seq == p+1           full: holds the value of position p, for the consumer
//	seq == p+capacity    read and cleared: free for position p+capacity,
//	                     one lap later
//
// (With capacity 1, "full for p" and "free for p+1" would both be p+1: this
// is why the capacity must be at least 2.)
//
// A producer loads tail, p, and looks at slot p's seq. If seq == p it claims
// position p by a compare-and-swap of tail from p to p+1, writes its value
// and publishes it by storing seq = p+1. If seq < p the slot still holds a
// value from the previous lap that the consumer has not read: the ring is
// full. If seq > p another producer got there first: it reloads tail and
// tries again. The consumer at head h reads slot h when seq == h+1, clears
// it and frees it for the next lap by storing seq = h+capacity.
//
// Producers never read head and the consumer never reads tail: they meet
// only in the seq of each slot, and every value is handed over by an atomic
// store of seq (after the value is written) and an atomic load of it (before
// the value is read), which is what orders the two under the Go memory
// model.
//
// # Worked example
//
// Capacity 4, producers A and B, the consumer C. The slots column shows
// the values in slots 0 to 3; (b1) is a value claimed but not yet
// published.
//
//	                                         tail head | seq[0] [1] [2] [3] | slots 0-3
//	 0. New(4): seq[i] = i                      0    0 |      0   1   2   3 | -    -    -    -
//	 1. A puts a1: p=0, seq[0]==0, CAS tail     1    0 |      0   1   2   3 | (a1) -    -    -
//	    A writes a1, publishes seq[0]=0+1       1    0 |      1   1   2   3 | a1   -    -    -
//	 2. B puts b1: p=1, seq[1]==1, claims;      2    0 |      1   1   2   3 | a1   (b1) -    -
//	    B is descheduled before publishing
//	 3. A puts a2: p=2, publishes seq[2]=3      3    0 |      1   1   3   3 | a1   (b1) a2   -
//	 4. C drains: seq[0]==0+1: takes a1,        3    1 |      4   1   3   3 | -    (b1) a2   -
//	    frees seq[0]=0+4; seq[1]==1, not 1+1:
//	    stops. Returns [a1]: a2 is ready but waits behind b1 (FIFO).
//	 5. B publishes seq[1]=1+1                  3    1 |      4   2   3   3 | -    b1   a2   -
//	 6. A puts a3: p=3, seq[3]=3+1              4    1 |      4   2   3   4 | -    b1   a2   a3
//	 7. B puts b2: p=4, slot 0, seq[0]==4       5    1 |      5   2   3   4 | b2   b1   a2   a3
//	 8. A puts a4: p=5, slot 1, seq[1]==2 < 5: full. TryPut returns false,
//	    Put waits and retries.
//	 9. C drains b1 a2 a3 b2, freeing each      5    5 |      8   5   6   7 | -    -    -    -
//	    slot for the next lap; seq[1]==5, not 5+1: stops.
//	10. A retries: p=5, seq[1]==5, claims,      6    5 |      8   6   6   7 | -    a4   -    -
//	    publishes seq[1]=5+1
//
// C received a1, b1, a2, a3, b2: each producer's values in the order it put
// them. Step 4 shows the price of the design: a producer stopped between its
// claim and its publish holds back the consumer (and, once the ring is
// full, the other producers) until it runs again. No goroutine ever blocks
// on a lock, but the queue is not lock-free in the strict sense that a
// stalled thread can never stop the others.
//
// # Concurrency
//
// Put, TryPut, Close, Err, Len and Cap may be called from any number of
// goroutines. Drain must be called by one goroutine at a time: that is the
// "single consumer", and nothing checks it.
package ring

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"
)

// MaxCapacity is the largest capacity [New] accepts. A ring allocates all
// its slots up front; this bound keeps a mistake from asking for gigabytes.
const MaxCapacity = 1 << 24

var (
	// ErrClosed is wrapped by the error of every Put on a closed ring.
	ErrClosed = errors.New("ring: closed")
	// ErrCapacity is wrapped by the error of New for a bad capacity.
	ErrCapacity = errors.New("ring: capacity must be a power of two")
)

// cacheLinePad separates the counters that different cores write. 64 bytes
// is a cache line on amd64, but Intel cores prefetch lines in 128-byte
// pairs and arm64 (Apple M-series) lines are 128 bytes, so 128 keeps the
// counters apart on both, for 256 bytes per ring.
const cacheLinePad = 128

// Waiting for room in Put: spins rounds of runtime.Gosched (room usually
// appears within microseconds, as soon as the consumer runs), then sleeps
// of minBackoff, doubling up to maxBackoff, so that a producer blocked
// behind a slow consumer costs a wake-up per millisecond, not a core.
const (
	spins      = 16
	minBackoff = 10 * time.Microsecond
	maxBackoff = time.Millisecond
)

type slot[T any] struct {
	seq atomic.Uint64
	val T
}

// A Ring is a bounded multi-producer single-consumer FIFO queue of T.
// Create one with [New]; the zero Ring is not usable, and a Ring must not
// be copied.
type Ring[T any] struct {
	// Read-only after New, or written once by Close: read by every Put and
	// Drain, so kept off the cache lines of tail and head, which are written
	// all the time.
	slots  []slot[T]
	mask   uint64 // len(slots)-1
	closed atomic.Pointer[closeState]
	done   chan struct{} // closed by Close: wakes producers waiting in Put

	// Without the padding, tail and head would share a cache line: every
	// CAS on tail by a producer would take the line away from the consumer
	// core, and every store to head would take it back from the producers
	// ("false sharing"), although neither side reads the other's counter.
	_    [cacheLinePad]byte
	tail atomic.Uint64 // next position to claim; CAS by producers
	_    [cacheLinePad - 8]byte
	head atomic.Uint64 // next position to read; stored only by the consumer
	_    [cacheLinePad - 8]byte
}

// closeState holds the stop flag and the error together: one atomic
// pointer, so that no one can see the ring closed without its error.
type closeState struct {
	cause  error // returned by Err
	putErr error // returned by Put: wraps ErrClosed and cause
}

// New returns an empty ring of the given capacity, which must be a power of
// two from 2 to [MaxCapacity].
func New[T any](capacity int) (*Ring[T], error) {
	if err := checkCapacity(capacity); err != nil {
		return nil, err
	}
	r := &Ring[T]{
		slots: make([]slot[T], capacity),
		mask:  uint64(capacity - 1),
		done:  make(chan struct{}),
	}
	for i := range r.slots {
		r.slots[i].seq.Store(uint64(i)) // slot i is free for position i
	}
	return r, nil
}

func checkCapacity(n int) error {
	// Power of two: the slot of a position is p&mask, not p%capacity. At
	// least 2: see "seq == p+1" in the package comment.
	if n < 2 || n > MaxCapacity || n&(n-1) != 0 {
		return fmt.Errorf("%w from 2 to %d, not %d", ErrCapacity, MaxCapacity, n)
	}
	return nil
}

// Cap returns the capacity of the ring.
func (r *Ring[T]) Cap() int { return len(r.slots) }

// Len returns the number of values put and not yet drained. Under
// concurrent use it is a snapshot that may be stale at once; it counts
// values still being written by their producers, and it is at most Cap.
func (r *Ring[T]) Len() int {
	// head first: tail only grows, and tail >= head at all times, so a tail
	// loaded after head is >= that head. Loaded the other way round, the
	// consumer could overtake the tail we saw and the difference go negative.
	h := r.head.Load()
	t := r.tail.Load()
	return int(min(t-h, uint64(len(r.slots))))
}

type putResult int

const (
	putOK putResult = iota
	putFull
	putClosed
)

// TryPut adds v to the ring if there is room and reports whether it did. It
// never waits: it returns false at once if the ring is full or closed.
func (r *Ring[T]) TryPut(v T) bool {
	return r.tryPut(v) == putOK
}

// Put adds v to the ring, waiting while the ring is full. It returns an
// error wrapping ErrClosed (and the error given to Close) if the ring is or
// gets closed, and one wrapping ctx.Err() if ctx ends first. ctx only bounds
// the wait: when there is room, Put succeeds without looking at it.
//
// A Put that returns nil has put v in the ring, even if the ring is closed
// an instant later: the consumer can still Drain it.
func (r *Ring[T]) Put(ctx context.Context, v T) error {
	switch r.tryPut(v) {
	case putOK:
		return nil
	case putClosed:
		return r.closed.Load().putErr
	}
	return r.putSlow(ctx, v)
}

// putSlow is Put when the ring was full: kept apart so that the fast path
// stays small.
func (r *Ring[T]) putSlow(ctx context.Context, v T) error {
	for range spins {
		runtime.Gosched() // let the consumer run, on this core if need be
		switch r.tryPut(v) {
		case putOK:
			return nil
		case putClosed:
			return r.closed.Load().putErr
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("ring: put on a full ring: %w", err)
		}
	}
	backoff := minBackoff
	timer := time.NewTimer(backoff)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-ctx.Done():
			return fmt.Errorf("ring: put on a full ring: %w", ctx.Err())
		case <-r.done:
			return r.closed.Load().putErr
		}
		switch r.tryPut(v) {
		case putOK:
			return nil
		case putClosed:
			return r.closed.Load().putErr
		}
		backoff = min(2*backoff, maxBackoff)
		timer.Reset(backoff)
	}
}

func (r *Ring[T]) tryPut(v T) putResult {
	pos, s, res := r.claim()
	if res == putOK {
		r.publish(pos, s, v)
	}
	return res
}

// claim reserves the next position for the caller, who must then publish
// it. Between the two the consumer cannot read past that position.
func (r *Ring[T]) claim() (uint64, *slot[T], putResult) {
	if r.closed.Load() != nil {
		return 0, nil, putClosed
	}
	pos := r.tail.Load()
	for {
		s := &r.slots[pos&r.mask]
		seq := s.seq.Load()
		// Positions and sequence numbers are uint64s that never wrap (at one
		// put per nanosecond they would take 584 years); the difference,
		// taken as signed, says where the slot stands relative to pos.
		switch diff := int64(seq - pos); {
		case diff == 0:
			// The slot is free for pos. Only one producer can move tail from
			// pos to pos+1, so only the winner writes this slot. The load of
			// seq above came after the consumer's store that freed the slot,
			// itself after it cleared the old value: the winner cannot
			// overwrite a value the consumer is still reading.
			if r.tail.CompareAndSwap(pos, pos+1) {
				return pos, s, putOK
			}
			pos = r.tail.Load() // another producer claimed pos: try the next
		case diff < 0:
			// seq is pos-capacity+1 (the previous lap's value, not yet read)
			// or pos-capacity (that value not even published yet): the ring
			// holds capacity values. Full.
			return 0, nil, putFull
		default:
			// seq > pos: our tail is stale, other producers have claimed pos
			// and maybe more since we loaded it.
			pos = r.tail.Load()
		}
	}
}

func (r *Ring[T]) publish(pos uint64, s *slot[T], v T) {
	s.val = v
	// Publish after writing the value: the consumer must not see the slot
	// before the value. The atomic store orders the write of val before it
	// for whoever loads seq == pos+1.
	s.seq.Store(pos + 1)
}

// Drain appends to dst, in order, up to max values that are ready in the
// ring, removes them from it, and returns the extended dst. It never waits:
// with nothing ready, or max <= 0, it returns dst unchanged. Pass dst[:0] of
// a slice kept between calls to drain without allocating.
//
// Drain is the consumer side: only one goroutine may call it at a time.
func (r *Ring[T]) Drain(dst []T, max int) []T {
	head := r.head.Load() // only this goroutine stores head
	var zero T
	for n := 0; n < max; n++ {
		s := &r.slots[head&r.mask]
		// Load seq before reading the value: seq == head+1 means the
		// producer's write of val happened before its store of seq.
		if s.seq.Load() != head+1 {
			// Empty, or the producer of head has claimed the slot but not
			// published it yet: later values wait behind it (FIFO).
			break
		}
		dst = append(dst, s.val)
		// Clear the slot, so the ring does not keep alive what the value
		// points to, before freeing it: once seq says "free", a producer
		// may write the slot at once.
		s.val = zero
		s.seq.Store(head + uint64(len(r.slots))) // free for the next lap
		head++
	}
	// One store per batch: head is only for Len, producers never read it.
	r.head.Store(head)
	return dst
}

// Close closes the ring: from then on Put and TryPut fail, and producers
// waiting in Put return at once with an error that wraps [ErrClosed] and
// err. The first Close wins; later calls do nothing. Close(nil) records
// ErrClosed itself as the error.
//
// Close discards nothing: values already put stay in the ring for Drain.
// It does not wait for Puts in progress, so a Put that started before Close
// may still add its value after Close returns. To drain everything, stop
// the producers first, then Drain until the ring is empty.
func (r *Ring[T]) Close(err error) {
	st := &closeState{cause: err, putErr: ErrClosed}
	switch {
	case err == nil:
		st.cause = ErrClosed
	case !errors.Is(err, ErrClosed):
		st.putErr = fmt.Errorf("%w: %w", ErrClosed, err)
	default:
		st.putErr = err
	}
	if r.closed.CompareAndSwap(nil, st) {
		close(r.done)
	}
}

// Err returns nil while the ring is open, and after Close the error given to
// the first Close (ErrClosed if that was nil).
func (r *Ring[T]) Err() error {
	if st := r.closed.Load(); st != nil {
		return st.cause
	}
	return nil
}
