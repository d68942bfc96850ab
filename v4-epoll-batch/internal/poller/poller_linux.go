package poller

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Events is a set of readiness conditions to watch for with Add and Mod.
// EPOLLERR and EPOLLHUP need not be asked for: the kernel always reports them.
type Events uint32

const (
	Readable Events = 1 << iota // EPOLLIN: data (or EOF) to read, or a connection to accept
	Writable                    // EPOLLOUT: room in the send buffer
	RDHup                       // EPOLLRDHUP: the peer shut down its writing side
)

// Event is one readiness report returned by Wait.
type Event struct {
	Data     uint64 // the data word given to Add or Mod, e.g. from Table.Put
	Readable bool   // EPOLLIN
	Writable bool   // EPOLLOUT
	RDHup    bool   // EPOLLRDHUP: the peer will send no more (half-close or close)
	Hup      bool   // EPOLLHUP: both directions are shut down
	Err      bool   // EPOLLERR: an error is pending on the socket (e.g. a reset)
}

// ErrClosed is returned by the methods of a closed Poller.
var ErrClosed = errors.New("poller: closed")

// wakeData is the data word of the eventfd's own registration. Table never
// produces it (its low half would be fd -1), and Add and Mod refuse it.
const wakeData = math.MaxUint64

// A Poller wraps one level-triggered epoll instance and one eventfd that
// other goroutines use to wake it.
//
// Add, Mod, Del and Wait belong to one goroutine, the reactor that owns the
// Poller. Wake may be called from any goroutine, at any time, also after
// Close. Close may be called from any goroutine: it wakes a Wait in progress
// and waits for it to return before it closes the descriptors.
type Poller struct {
	// mu guards the descriptors' lifetime: every use of epfd or efd holds
	// it for reading and first checks closed; Close sets closed, then takes
	// mu for writing, which waits for the uses in progress, and closes the
	// descriptors. So a Wake racing with Close either writes to the live
	// eventfd or returns ErrClosed; it never writes to a descriptor number
	// that has been closed and perhaps handed to a new file.
	mu     sync.RWMutex
	closed atomic.Bool

	epfd int
	efd  int

	buf  []unix.EpollEvent // Wait's buffer, reused between calls
	rbuf [8]byte           // Wait's buffer for reading the eventfd
	one  [8]byte           // the uint64 1 in host byte order, written by Wake; read-only
}

// New creates a Poller: an epoll instance and an eventfd registered on it,
// both close-on-exec.
func New() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setData(&ev, wakeData)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(efd)
		unix.Close(epfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	p := &Poller{epfd: epfd, efd: efd}
	binary.NativeEndian.PutUint64(p.one[:], 1) // eventfd counts in host byte order
	return p, nil
}

// Add registers fd with the interest ev. Each event for fd will carry data.
func (p *Poller) Add(fd int, ev Events, data uint64) error {
	return p.ctl(unix.EPOLL_CTL_ADD, fd, ev, data)
}

// Mod replaces the interest and the data word of a registered fd.
func (p *Poller) Mod(fd int, ev Events, data uint64) error {
	return p.ctl(unix.EPOLL_CTL_MOD, fd, ev, data)
}

// Del removes fd from the Poller. Closing fd removes it too, provided no
// other descriptor (a dup) refers to the same socket.
func (p *Poller) Del(fd int) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return ErrClosed
	}
	// A nil event is accepted for EPOLL_CTL_DEL since Linux 2.6.9.
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

func (p *Poller) ctl(op, fd int, ev Events, data uint64) error {
	if data == wakeData {
		return errors.New("poller: data word MaxUint64 is reserved")
	}
	var e unix.EpollEvent // level-triggered: no EPOLLET
	if ev&Readable != 0 {
		e.Events |= unix.EPOLLIN
	}
	if ev&Writable != 0 {
		e.Events |= unix.EPOLLOUT
	}
	if ev&RDHup != 0 {
		e.Events |= unix.EPOLLRDHUP
	}
	setData(&e, data)

	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return ErrClosed
	}
	if err := unix.EpollCtl(p.epfd, op, fd, &e); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// Wait waits for events and fills events with them, returning how many it
// filled. A negative timeout blocks until an event or a Wake; zero polls.
// Timeouts are rounded up to whole milliseconds.
//
// Wake-ups are not returned as events: woken reports that Wake was called
// since the last Wait (many calls count as one). Wait may return n == 0
// with woken true, or n == 0 and woken false after the timeout.
//
// events must not be empty. Wait does not allocate, except the first time
// (or the first time it is given a longer slice than before).
func (p *Poller) Wait(events []Event, timeout time.Duration) (n int, woken bool, err error) {
	if len(events) == 0 {
		return 0, false, errors.New("poller: Wait needs a non-empty events slice")
	}
	// One slot more than the caller's slice, for the eventfd: so a wake-up
	// never takes the place of a connection's event.
	if cap(p.buf) < len(events)+1 {
		p.buf = make([]unix.EpollEvent, len(events)+1)
	}
	buf := p.buf[:len(events)+1]

	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return 0, false, ErrClosed
	}

	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	var got int
	for {
		got, err = unix.EpollWait(p.epfd, buf, msec(timeout))
		if err != unix.EINTR {
			break
		}
		// Interrupted by a signal: wait again, for what is left of the timeout.
		if timeout > 0 {
			if timeout = time.Until(deadline); timeout <= 0 {
				return 0, false, nil
			}
		}
	}
	if err != nil {
		return 0, false, os.NewSyscallError("epoll_wait", err)
	}

	for i := range buf[:got] {
		e := &buf[i]
		data := getData(e)
		if data == wakeData {
			// Reset the counter, so the eventfd stops being readable.
			// EAGAIN (already zero) cannot happen as only Wait reads it,
			// and would be harmless anyway.
			_, _ = unix.Read(p.efd, p.rbuf[:])
			woken = true
			continue
		}
		if n == len(events) {
			// The spare slot held a connection's event, not the eventfd's,
			// and the caller's slice is full. Level-triggered epoll reports
			// that descriptor again at the next Wait: nothing is lost.
			continue
		}
		events[n] = Event{
			Data:     data,
			Readable: e.Events&unix.EPOLLIN != 0,
			Writable: e.Events&unix.EPOLLOUT != 0,
			RDHup:    e.Events&unix.EPOLLRDHUP != 0,
			Hup:      e.Events&unix.EPOLLHUP != 0,
			Err:      e.Events&unix.EPOLLERR != 0,
		}
		n++
	}
	return n, woken, nil
}

// msec converts a Wait timeout to epoll_wait's milliseconds, rounding up so
// that a short positive timeout does not become a busy poll.
func msec(d time.Duration) int {
	switch {
	case d < 0:
		return -1
	case d >= math.MaxInt32*time.Millisecond:
		return math.MaxInt32
	default:
		return int((d + time.Millisecond - 1) / time.Millisecond)
	}
}

// Wake makes the current or the next Wait return with woken set. It is safe
// to call from any goroutine. Wakes that come before the Wait collapse into
// one. After Close it returns ErrClosed.
func (p *Poller) Wake() error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return ErrClosed
	}
	return p.wake()
}

// wake adds one to the eventfd counter. The caller makes sure efd is open.
func (p *Poller) wake() error {
	// p.one rather than a local array, which would escape to the heap in
	// -race builds (checkptr) and make Wake allocate.
	_, err := unix.Write(p.efd, p.one[:])
	if err == unix.EAGAIN {
		// The counter is at its maximum: a wake-up is pending already.
		return nil
	}
	if err != nil {
		return os.NewSyscallError("write eventfd", err)
	}
	return nil
}

// Close closes the epoll instance and the eventfd. It wakes a Wait that is
// blocked in another goroutine and waits for it to return first. Only the
// first call does anything; later calls return nil. After Close, every
// method returns ErrClosed.
func (p *Poller) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	// Unblock a Wait in progress, which holds mu for reading. efd is still
	// open: only this call closes it. closed is set first, so a Wait that
	// consumes this wake-up and is called again returns ErrClosed instead
	// of blocking with mu held.
	_ = p.wake()

	p.mu.Lock()
	defer p.mu.Unlock()
	err1 := unix.Close(p.efd)
	err2 := unix.Close(p.epfd)
	p.efd, p.epfd = -1, -1
	if err := errors.Join(err1, err2); err != nil {
		return os.NewSyscallError("close", err)
	}
	return nil
}

// The data word is the 64-bit epoll_data union, which x/sys spells as the
// two 32-bit fields Fd and Pad. Writing and reading it the same way gives
// back the same 64 bits on every architecture.
func setData(e *unix.EpollEvent, data uint64) {
	e.Fd = int32(uint32(data))
	e.Pad = int32(uint32(data >> 32))
}

func getData(e *unix.EpollEvent) uint64 {
	return uint64(uint32(e.Fd)) | uint64(uint32(e.Pad))<<32
}
