package epollbatch

import (
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The client's epoll engine: the reactors that drive its plain TCP and
// Unix connections, its own (WithReactors) or the group all clients share.

// clientReactors are a client's reactors, taken by its first reactor
// connection and given back by Close.
type clientReactors struct {
	mu     sync.Mutex
	loops  []*loop
	shared bool // loops belong to the shared group
	closed bool
}

// reactorLoops returns the client's reactors, starting (or joining) them
// on first use.
func (c *Client) reactorLoops() ([]*loop, bool, error) {
	r := &c.reactor
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, false, ErrShutdown
	}
	if r.loops != nil {
		return r.loops, r.shared, nil
	}
	if c.opts.reactors > 0 { // reactors of its own
		for range c.opts.reactors {
			l, err := newLoop(c.opts.logger, 0, c.opts.busyPoll)
			if err != nil {
				for _, l := range r.loops {
					l.stop()
				}
				r.loops = nil
				return nil, false, err
			}
			r.loops = append(r.loops, l)
			go l.run()
		}
		return r.loops, false, nil
	}
	loops, err := shared.acquire(c.opts.busyPoll) // the reactors all clients share
	if err != nil {
		return nil, false, err
	}
	r.loops, r.shared = loops, true
	return loops, true, nil
}

// releaseReactors stops the client's own reactors, or leaves the shared
// group (Close).
func (c *Client) releaseReactors() {
	r := &c.reactor
	r.mu.Lock()
	loops, sharedLoops := r.loops, r.shared
	r.loops, r.closed = nil, true
	r.mu.Unlock()
	if sharedLoops && loops != nil {
		shared.release(c.opts.busyPoll)
		return
	}
	for _, l := range loops {
		l.stop()
	}
}

func (c *Client) reactorStats(st *Stats) {
	r := &c.reactor
	r.mu.Lock()
	loops := r.loops
	r.mu.Unlock()
	for _, l := range loops {
		st.Writes += l.writes.Load()
		st.Frames += l.frames.Load()
	}
}

// dialReactor gives a plain socket to a reactor: it takes its own copy of
// the descriptor and closes nc. ok is false for a connection the portable
// engine must drive (TLS, WithPortableEngine).
func (c *Client) dialReactor(nc net.Conn, i int) (callConn, bool, error) {
	if c.opts.portable {
		return nil, false, nil
	}
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil, false, nil
	}
	loops, sharedLoops, err := c.reactorLoops()
	if err != nil {
		nc.Close()
		return nil, true, err
	}
	fd, err := connFd(nc)
	nc.Close() // the copy lives on; Go's netpoller lets go of the original
	if err != nil {
		return nil, true, err
	}
	var l *loop
	if sharedLoops { // spread every client's connections over the group
		l = loops[shared.next.Add(1)%uint64(len(loops))]
	} else {
		l = loops[i%len(loops)]
	}
	cc := &clientConn{cl: c, pending: make(map[uint64]*Call), dead: make(chan struct{})}
	cc.c, err = newConn(l, fd, cc, c.opts.maxFrameSize, c.opts.bufSize, DefaultRingSize)
	if err != nil {
		unix.Close(fd)
		return nil, true, err
	}
	c.live.Add(1) // before the reactor has it: its first failure counts it out (fail)
	if err := l.attach(cc.c); err != nil {
		c.live.Add(-1)
		unix.Close(fd)
		return nil, true, ErrShutdown
	}
	cc.startHeartbeat()
	return cc, true, nil
}

// sharedLoops are the reactors that clients share unless WithReactors
// gives them their own: GOMAXPROCS of them, started by the first Dial and
// stopped when the last Client closes, so that nothing runs at import time
// or after the last client. A thousand clients then cost GOMAXPROCS
// reactor goroutines, not a thousand.
//
// They busy-poll for the longest WithBusyPoll of the clients that use them.
type sharedLoops struct {
	mu    sync.Mutex
	refs  int
	loops []*loop
	next  atomic.Uint64
	polls map[time.Duration]int // the clients' WithBusyPoll values, counted
}

// setBusyPoll gives every loop the longest busy poll asked for.
func (s *sharedLoops) setBusyPoll() {
	var longest time.Duration
	for d := range s.polls {
		longest = max(longest, d)
	}
	for _, l := range s.loops {
		l.busyPoll.Store(int64(longest)) // a loop asleep sees it after its next work
	}
}

var shared sharedLoops

func (s *sharedLoops) acquire(busyPoll time.Duration) ([]*loop, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs == 0 {
		for range runtime.GOMAXPROCS(0) {
			l, err := newLoop(slog.New(slog.DiscardHandler), 0, 0)
			if err != nil {
				for _, l := range s.loops {
					l.stop()
				}
				s.loops = nil
				return nil, err
			}
			s.loops = append(s.loops, l)
			go l.run()
		}
	}
	s.refs++
	if s.polls == nil {
		s.polls = make(map[time.Duration]int)
	}
	s.polls[busyPoll]++
	s.setBusyPoll()
	return s.loops, nil
}

func (s *sharedLoops) release(busyPoll time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.polls[busyPoll]--; s.polls[busyPoll] == 0 {
		delete(s.polls, busyPoll)
	}
	if s.refs--; s.refs == 0 {
		for _, l := range s.loops {
			l.stop()
		}
		s.loops = nil
		return
	}
	s.setBusyPoll()
}

// connFd returns a non-blocking, close-on-exec copy of nc's descriptor.
func connFd(nc net.Conn) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("epollbatch: %T has no descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(f uintptr) { fd, dupErr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, dupErr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
