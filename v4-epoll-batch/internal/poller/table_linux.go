package poller

import "math"

// Table maps a file descriptor to the reactor's value for it (its
// connection), and hands out the epoll data word that finds the value again.
//
// The data word is fd | generation<<32. Every Put bumps the generation of
// the fd's slot, and Get checks it. So when a connection is closed and the
// kernel gives its fd number to a new connection, an event still on its way
// for the old one (already returned by Wait, in the batch being processed)
// does not match and is dropped: it never reaches the new connection. No
// pointer goes through the kernel, only a number that is checked.
//
// A Table is not safe for concurrent use: it belongs to one reactor
// goroutine, like the Poller it goes with. Slots live in a slice indexed by
// fd, grown as needed: fd numbers are small and dense.
type Table[T any] struct {
	slots []slot[T]
	n     int
}

type slot[T any] struct {
	gen  uint32 // bumped by each Put; wraps after 2^32 Puts on one fd
	used bool
	v    T
}

// Put stores v for fd, replacing any value there, and returns the data word
// to give to Poller.Add or Poller.Mod. Data words from earlier Puts for the
// same fd stop matching. fd must be a valid descriptor number (>= 0).
func (t *Table[T]) Put(fd int, v T) (data uint64) {
	if fd < 0 || fd > math.MaxInt32 {
		panic("poller: Table.Put: bad fd")
	}
	if fd >= len(t.slots) {
		n := max(fd+1, 2*len(t.slots), 64)
		t.slots = append(t.slots, make([]slot[T], n-len(t.slots))...)
	}
	s := &t.slots[fd]
	if !s.used {
		t.n++
	}
	s.gen++
	s.used = true
	s.v = v
	return uint64(fd) | uint64(s.gen)<<32
}

// Get returns the value stored by the Put that returned data. It returns
// false if the fd's value has been removed or replaced since.
func (t *Table[T]) Get(data uint64) (T, bool) {
	fd, gen := uint32(data), uint32(data>>32)
	if uint64(fd) < uint64(len(t.slots)) { // unsigned: an fd over 2^31 is no negative index on 32-bit systems
		if s := &t.slots[fd]; s.used && s.gen == gen {
			return s.v, true
		}
	}
	var zero T
	return zero, false
}

// Remove forgets the value for fd, if any. Call it when the connection is
// closed, before its fd number can be reused.
func (t *Table[T]) Remove(fd int) {
	if fd < 0 || fd >= len(t.slots) {
		return
	}
	s := &t.slots[fd]
	if s.used {
		t.n--
	}
	var zero T
	s.used = false
	s.v = zero // let the garbage collector have it
}

// Each calls f with every value in the table, in fd order. f must not
// change the table; collect first, then act.
func (t *Table[T]) Each(f func(T)) {
	for i := range t.slots {
		if t.slots[i].used {
			f(t.slots[i].v)
		}
	}
}

// Len returns the number of fds that have a value.
func (t *Table[T]) Len() int { return t.n }

// Fd returns the fd number in a data word returned by Put.
func Fd(data uint64) int { return int(uint32(data)) }
