// Package timewheel is a hashed timing wheel: the idle timeouts of one
// reactor's connections, kept in a ring of slots that the reactor turns
// itself, one tick at a time (Varghese and Lauck, "Hashed and Hierarchical
// Timing Wheels", 1987).
//
// # Idea
//
// Time is cut into ticks of a fixed length, counted from the moment the
// wheel is made. A deadline is rounded up to the end of its tick, t, and
// its key goes into slot t mod slots: slot s holds the keys of ticks s,
// s+slots, s+2*slots, ... . Each time the reactor passes a tick boundary it
// visits that tick's slot and expires the keys whose tick has come; a key
// one or more revolutions away stays for a later visit. Netty's
// HashedWheelTimer keeps a "rounds" counter in each entry and decrements it
// at every visit; this wheel stores the tick itself, so that a visit writes
// nothing to the keys that stay (rounds left = (tick - current) / slots).
//
//	tick = 100ms, 8 slots; the wheel has passed tick 1 (100ms after New)
//
//	                next tick to visit: 2
//	                v
//	slot  0    1    2    3    4    5    6    7
//	   +----+----+----+----+----+----+----+----+
//	   |    |    |    | a  | b  |    |    |    |
//	   |    |    |    | c  |    |    |    |    |
//	   +----+----+----+----+----+----+----+----+
//
//	a: deadline  230ms, rounded up to tick 3 (300ms),  slot 3
//	b: deadline  400ms, exactly tick 4 (400ms),        slot 4
//	c: deadline 1020ms, rounded up to tick 11 (1.1s),  slot 11 mod 8 = 3
//
//	Advance(450ms) passes ticks 2, 3 and 4: it visits slots 2, 3 and 4 and
//	returns a and b; c stays in slot 3 until the visit of tick 11.
//
// Set and Remove are O(1): a map lookup and a splice in the slot's
// doubly-linked list; moving a deadline within its slot (the same tick, or
// a later revolution), what a busy connection does on every read, does not
// even splice. Advance visits each slot passed once at most, however long
// the reactor was away, and compares the keys it holds; Next finds the next
// non-empty slot in a bitmap, 64 slots a word. Entries are recycled through
// a free list: a wheel that has reached its working size allocates nothing.
//
// # Why not a time.Timer per connection
//
// 10,000 idle connections with a timer each are 10,000 timers in the
// runtime's timer heaps: every read that pushes a deadline back is a Reset,
// O(log n) heap work, and a timer that fires runs a function in a new
// goroutine (AfterFunc) or sends on a channel that some goroutine must
// watch; either way the news must then travel, through a channel or a lock,
// to the reactor that owns the connection. But a reactor already sleeps in
// epoll_wait with a timeout, so it can keep time itself: it passes
// [Wheel.Next] as that timeout, calls [Wheel.Advance] when it wakes, and
// closes what comes back. 10,000 idle connections then cost one wheel:
// 10,000 small entries, no runtime timer, no extra goroutine.
//
// # Precision
//
// The price is precision. A key expires in the first Advance whose now is
// at or after its deadline rounded up to the end of its tick: never before
// its deadline and, if the reactor wakes when Next says, less than one tick
// after it (later only if the reactor was busy; then everything due comes
// out of one call). For idle timeouts of seconds or minutes a tick of 100ms
// to 1s is plenty: a finer tick only wakes a reactor with connections more
// often. Make a revolution, slots*tick, at least the usual timeout, and most
// keys are visited only once, when they are due.
//
// # Rules
//
// The wheel never reads the clock: every method that needs the time takes
// now, which also makes it deterministic to test. Pass times of one clock:
// time.Now() and times derived from it with Add. The wheel's time never goes
// back: an Advance to a now earlier than one it has passed expires only the
// keys that were already due.
//
// A Wheel is not safe for concurrent use: it belongs to one goroutine, the
// reactor that owns the connections it times. Nothing checks this.
package timewheel

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"
)

// MaxSlots is the largest number of slots [New] accepts.
const MaxSlots = 1 << 16

var (
	// ErrTick is wrapped by the error of New for a tick that is not positive.
	ErrTick = errors.New("timewheel: tick must be positive")
	// ErrSlots is wrapped by the error of New for a bad number of slots.
	ErrSlots = errors.New("timewheel: slots out of range")
)

// none ends a list of entry indices.
const none = -1

// An entry is a scheduled key, or a list head, or a free entry.
type entry[K comparable] struct {
	key K
	// at is the tick at which key expires: its deadline rounded up.
	at int64
	// prev and next link the entry into the circular list of its slot; next
	// also links the free list.
	prev, next int32
	// list is the index of the head of the list the entry is in.
	list int32
}

// A Wheel is a hashed timing wheel of keys of type K: see the package
// comment. Create one with [New]; the zero Wheel is not usable.
type Wheel[K comparable] struct {
	tick  time.Duration
	start time.Time // tick t ends at start + t*tick
	cur   int64     // the last tick passed: ticks up to cur have been visited
	slots int

	// entries[0:slots] are the heads of the slot lists, entries[slots] the
	// head of the due list: keys set with a deadline already passed, which
	// the next Advance expires whatever its now. The rest are keys or free.
	// Indices rather than pointers: no pointers for the GC to scan, unless
	// K has some.
	entries []entry[K]
	free    int32 // first free entry, or none
	index   map[K]int32
	// busy has bit s set when slot s is not empty, so that Next and a long
	// Advance skip 64 empty slots at a time.
	busy []uint64
}

// New returns an empty wheel of the given number of slots (1 to
// [MaxSlots]), each a tick long (tick > 0). Tick boundaries are counted from
// now: tick t ends at now + t*tick.
func New[K comparable](tick time.Duration, slots int, now time.Time) (*Wheel[K], error) {
	if tick <= 0 {
		return nil, fmt.Errorf("%w, not %v", ErrTick, tick)
	}
	if slots < 1 || slots > MaxSlots {
		return nil, fmt.Errorf("%w: want 1 to %d, not %d", ErrSlots, MaxSlots, slots)
	}
	w := &Wheel[K]{
		tick:    tick,
		start:   now,
		slots:   slots,
		entries: make([]entry[K], slots+1),
		free:    none,
		index:   make(map[K]int32),
		busy:    make([]uint64, (slots+63)/64),
	}
	for i := range w.entries {
		w.entries[i] = entry[K]{prev: int32(i), next: int32(i), list: int32(i)}
	}
	return w, nil
}

// Len returns the number of keys scheduled.
func (w *Wheel[K]) Len() int { return len(w.index) }

// Set schedules key to expire at deadline, rounded up to the end of its
// tick, replacing its previous deadline if it has one (later or earlier). A
// deadline at or before the last tick boundary the wheel has passed expires
// at the next Advance, whatever its now.
func (w *Wheel[K]) Set(key K, deadline time.Time) {
	at := w.ceilTick(deadline)
	list := int32(w.slots) // the due list
	if at > w.cur {
		list = int32(at % int64(w.slots))
	}
	if i, ok := w.index[key]; ok {
		e := &w.entries[i]
		e.at = at
		if e.list != list {
			w.unlink(i)
			w.link(i, list)
		}
		return
	}
	i := w.alloc()
	e := &w.entries[i]
	e.key, e.at = key, at
	w.link(i, list)
	w.index[key] = i
}

// Remove unschedules key. It does nothing if key is not scheduled.
func (w *Wheel[K]) Remove(key K) {
	if i, ok := w.index[key]; ok {
		w.release(i)
	}
}

// Advance moves the wheel to now and expires every key whose deadline,
// rounded up to the end of its tick, is at or before now: it appends them to
// expired, unschedules them and returns the extended slice. Reuse the slice
// (pass expired[:0]) and Advance allocates nothing.
//
// The keys come in the order of their ticks if less than a revolution has
// passed since the last Advance; after a longer wait (a busy reactor) their
// order is unspecified, but all that is due is expired in this one call, at
// a cost of at most one visit per slot.
func (w *Wheel[K]) Advance(now time.Time, expired []K) []K {
	expired = w.expire(int32(w.slots), math.MaxInt64, expired)
	target := w.floorTick(now)
	if target <= w.cur {
		return expired // no tick boundary passed, or time went back
	}
	if len(w.index) > 0 {
		// Slots of the ticks cur+1 .. target, each at most once: a slot
		// passed twice or more holds no key the first visit would leave,
		// because it expires every key of tick <= target, not just of one.
		n := int(min(target-w.cur, int64(w.slots)))
		from := int((w.cur + 1) % int64(w.slots))
		for k := w.scan(from, n); k < n; k = w.scan(from, n) {
			s := from + k
			if s >= w.slots {
				s -= w.slots
			}
			expired = w.expire(int32(s), target, expired)
			// Continue after slot s.
			from, n = s+1, n-k-1
			if from == w.slots {
				from = 0
			}
		}
	}
	w.cur = target
	return expired
}

// Next returns how long after now the wheel should next be advanced, and
// false if it is empty. The wait ends at the first tick boundary not yet
// passed whose slot holds a key: never after the earliest deadline rounded
// up to its tick, the moment Advance would expire it, but possibly before it,
// if that slot only holds keys of a later revolution (Advance then expires
// nothing and Next gives the next wait). It is 0 if a key is already due or
// now is past that boundary.
//
// A reactor passes it as the timeout of epoll_wait: convert it to
// milliseconds rounding up, or the reactor wakes just before the boundary
// and finds nothing to do.
func (w *Wheel[K]) Next(now time.Time) (time.Duration, bool) {
	if len(w.index) == 0 {
		return 0, false
	}
	if h := int32(w.slots); w.entries[h].next != h {
		return 0, true // the due list
	}
	// Some slot is not empty: scan finds it within one revolution.
	k := w.scan(int((w.cur+1)%int64(w.slots)), w.slots)
	end := time.Duration(w.cur+1+int64(k)) * w.tick // since start
	return max(end-now.Sub(w.start), 0), true
}

// ceilTick returns the tick at whose end t falls, rounding up: the first
// tick boundary at or after t. Ticks at or before start are <= 0.
func (w *Wheel[K]) ceilTick(t time.Time) int64 {
	d := t.Sub(w.start) // saturates: no overflow for far times
	q := d / w.tick     // rounds toward zero: up for d < 0
	if d > 0 && d-q*w.tick != 0 {
		q++
	}
	return int64(q)
}

// floorTick returns the last tick boundary at or before t, or -1 if t is
// before start.
func (w *Wheel[K]) floorTick(t time.Time) int64 {
	d := t.Sub(w.start)
	if d < 0 {
		return -1
	}
	return int64(d / w.tick)
}

// scan returns the offset k < n of the first non-empty slot from+k (mod
// slots), looking at n slots from slot from, or n if they are all empty.
func (w *Wheel[K]) scan(from, n int) int {
	for k := 0; k < n; {
		s := from + k
		if s >= w.slots {
			s -= w.slots
		}
		// Bits past the last slot are never set: a non-zero word has its
		// first bit at or after s within this word, below slots.
		if word := w.busy[s>>6] >> (s & 63); word != 0 {
			k += bits.TrailingZeros64(word)
			return min(k, n)
		}
		// Skip to the next word, or to slot 0 if the last slot comes first.
		k += min(64-s&63, w.slots-s)
	}
	return n
}

// expire appends the keys of list whose tick is at or before target, and
// unschedules them.
func (w *Wheel[K]) expire(list int32, target int64, expired []K) []K {
	for i := w.entries[list].next; i != list; {
		e := &w.entries[i]
		next := e.next
		if e.at <= target {
			expired = append(expired, e.key)
			w.release(i)
		}
		i = next
	}
	return expired
}

// alloc returns a free entry, from the free list if it has one.
func (w *Wheel[K]) alloc() int32 {
	if i := w.free; i != none {
		w.free = w.entries[i].next
		return i
	}
	if len(w.entries) >= math.MaxInt32 {
		panic("timewheel: too many keys")
	}
	w.entries = append(w.entries, entry[K]{})
	return int32(len(w.entries) - 1)
}

// release unschedules entry i and frees it.
func (w *Wheel[K]) release(i int32) {
	w.unlink(i)
	e := &w.entries[i]
	delete(w.index, e.key)
	var zero K
	e.key = zero // drop what the key refers to, if anything
	e.next, e.list = w.free, none
	w.free = i
}

// link appends entry i to list.
func (w *Wheel[K]) link(i, list int32) {
	h := &w.entries[list]
	last := h.prev
	h.prev = i
	e := &w.entries[i]
	e.prev, e.next, e.list = last, list, list
	w.entries[last].next = i
	if last == list && int(list) < w.slots {
		w.busy[list>>6] |= 1 << (list & 63)
	}
}

// unlink takes entry i out of its list.
func (w *Wheel[K]) unlink(i int32) {
	e := &w.entries[i]
	w.entries[e.prev].next = e.next
	w.entries[e.next].prev = e.prev
	if list := e.list; w.entries[list].next == list && int(list) < w.slots {
		w.busy[list>>6] &^= 1 << (list & 63)
	}
}
