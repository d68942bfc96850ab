package epollbatch

import (
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/internal/poller"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/internal/timewheel"
)

// errPeerGone: epoll reported a hang-up or an error on a connection that
// no longer reads.
var errPeerGone = errors.New("epollbatch: peer hung up")

// maxEvents is how many readiness events one epoll_wait returns at most.
const maxEvents = 256

// loop is a sub-reactor: one goroutine, one epoll instance, and the
// connections it owns for their whole life. Only the loop's goroutine
// reads, writes or closes its connections' sockets; other goroutines ask
// it to, by queueing the connection in ready and waking it.
//
//	┌───────────── epoll_wait (level-triggered) ─────────────┐
//	│ readable: read, decode every complete frame, hand off  │
//	│ writable: resume a partial writev                      │
//	│ woken:    attach new connections; flush or resume the │
//	│           ones in ready; stop                          │
//	│ timeout:  the wheel's next tick: close idle ones       │
//	└────────────────────────────────────────────────────────┘
type loop struct {
	p      *poller.Poller
	table  poller.Table[*conn] // fd -> connection, with generations
	events []poller.Event
	logger *slog.Logger

	idleTimeout time.Duration
	wheel       *timewheel.Wheel[*conn] // idle deadlines; nil when there is no idle timeout
	expired     []*conn
	iov         []unix.Iovec // one writev's buffers (conn.flush), on the loop goroutine; cleared after each call

	// queued counts the entries in adds and ready; sleeping is set while
	// the loop is (about to be) blocked in epoll_wait. Producers write the
	// eventfd only when it is set: a reactor that is awake sees queued
	// before it next blocks. (The loop stores sleeping, then loads queued;
	// a producer adds to queued, then loads sleeping. Go's atomics are
	// sequentially consistent, so at least one of them sees the other's
	// write: the work is never left waiting.)
	queued   atomic.Int32
	sleeping atomic.Bool

	busyPoll atomic.Int64 // WithBusyPoll, in ns; 0: block at once

	mu       sync.Mutex
	adds     []*conn // connections handed over by the acceptor or a dialer
	ready    []*conn // connections with frames to send, or reading to resume
	stopping bool
	draining bool // Shutdown: every connection stops reading requests
	drained  bool // (loop goroutine) draining has been applied

	writes, frames atomic.Int64
	conns          atomic.Int32
	inflight       atomic.Int64 // requests of its connections not yet answered
	ringsLent      atomic.Int32 // server connections holding a ring (busy ones)
	done           chan struct{}
}

func newLoop(logger *slog.Logger, idleTimeout, busyPoll time.Duration) (*loop, error) {
	p, err := poller.New()
	if err != nil {
		return nil, err
	}
	l := &loop{
		p:           p,
		events:      make([]poller.Event, maxEvents),
		logger:      logger,
		idleTimeout: idleTimeout,
		done:        make(chan struct{}),
	}
	l.busyPoll.Store(int64(busyPoll))
	if idleTimeout > 0 {
		tick := max(idleTimeout/64, 10*time.Millisecond)
		l.wheel, err = timewheel.New[*conn](tick, 256, time.Now())
		if err != nil {
			p.Close()
			return nil, err
		}
	}
	return l, nil
}

// attach hands c to the loop (any goroutine).
func (l *loop) attach(c *conn) error {
	l.mu.Lock()
	if l.stopping {
		l.mu.Unlock()
		return ErrServerClosed
	}
	l.adds = append(l.adds, c)
	l.queued.Add(1)
	l.mu.Unlock()
	if l.sleeping.Load() {
		return l.p.Wake()
	}
	return nil
}

// schedule asks the loop to look at c: flush its ring, resume reading,
// check whether it can close (any goroutine). Cheap when c is already
// scheduled.
func (l *loop) schedule(c *conn) {
	if !c.scheduled.CompareAndSwap(false, true) {
		return
	}
	l.mu.Lock()
	l.ready = append(l.ready, c)
	l.queued.Add(1)
	l.mu.Unlock()
	if l.sleeping.Load() {
		l.p.Wake()
	}
}

// drainAll asks every connection to stop reading requests (Shutdown).
func (l *loop) drainAll() {
	l.mu.Lock()
	l.draining = true
	l.mu.Unlock()
	l.p.Wake()
}

// pendingAdds counts connections handed over but not yet attached.
func (l *loop) pendingAdds() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.adds)
}

// stop ends the loop: every connection is closed, then the poller.
func (l *loop) stop() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.p.Wake()
	<-l.done
}

// polling reports whether the loop looks again without blocking: when
// the last round found work (work tends to come in bursts), and for
// WithBusyPoll after the last work. A request, or the reply a worker or
// the peer is about to send, is then taken without a thread to wake: a
// blocking epoll_wait costs a thread hand-off each time, tens of
// microseconds on a VM.
func (l *loop) polling(busy bool, sinceWork time.Duration) bool {
	return busy || sinceWork < time.Duration(l.busyPoll.Load())
}

func (l *loop) run() {
	defer close(l.done)
	var adds, ready []*conn
	busy := false // the last round found work
	var lastWork time.Time
	for {
		timeout := time.Duration(-1)
		if l.polling(busy, time.Since(lastWork)) {
			// Look again without blocking, after letting the goroutines
			// we just woke (workers, callers) run.
			runtime.Gosched()
			timeout = 0
		} else if l.wheel != nil {
			if d, ok := l.wheel.Next(time.Now()); ok {
				timeout = d
			}
		}
		if timeout != 0 {
			l.sleeping.Store(true)
			if l.queued.Load() > 0 { // queued before we said we would sleep
				timeout = 0
			}
		}
		n, woken, err := l.p.Wait(l.events, timeout)
		l.sleeping.Store(false)
		work := woken || l.queued.Load() > 0
		busy = n > 0 || work
		if busy {
			lastWork = time.Now()
		}
		if err != nil {
			if !errors.Is(err, poller.ErrClosed) {
				l.logger.Error("epollbatch: epoll_wait failed; stopping the reactor", "err", err)
			}
			l.closeAll(err)
			return
		}
		for i := range n {
			ev := &l.events[i]
			c, ok := l.table.Get(ev.Data)
			if !ok {
				continue // a stale event: the fd was closed, maybe reused
			}
			c.onEvent(ev)
		}
		if work {
			l.mu.Lock()
			adds, l.adds = l.adds, adds[:0]
			ready, l.ready = l.ready, ready[:0]
			l.queued.Store(0)
			stopping, draining := l.stopping, l.draining
			l.mu.Unlock()
			for _, c := range adds {
				l.add(c)
			}
			clear(adds) // the slices are kept for the next round: no stale connections in them
			if draining && !l.drained {
				l.drained = true
				var all []*conn
				l.table.Each(func(c *conn) { all = append(all, c) })
				for _, c := range all {
					c.drainReq.Store(true)
					c.onScheduled()
				}
			}
			for _, c := range ready {
				c.scheduled.Store(false)
				if !c.closed {
					c.onScheduled()
				}
			}
			clear(ready)
			if stopping {
				l.closeAll(ErrServerClosed)
				l.p.Close()
				return
			}
		}
		if l.wheel != nil {
			l.expired = l.wheel.Advance(time.Now(), l.expired[:0])
			for _, c := range l.expired {
				c.onIdle()
			}
			clear(l.expired)
		}
	}
}

// add registers a new connection with epoll.
func (l *loop) add(c *conn) {
	c.data = l.table.Put(c.fd, c)
	c.interest = poller.Readable | poller.RDHup
	if err := l.p.Add(c.fd, c.interest, c.data); err != nil {
		l.table.Remove(c.fd)
		c.closeNow(err)
		return
	}
	l.conns.Add(1)
	c.touch()
	c.side.attached(c)
}

// closeAll closes every connection of the loop.
func (l *loop) closeAll(err error) {
	l.mu.Lock()
	adds := l.adds
	l.adds = nil
	l.mu.Unlock()
	for _, c := range adds {
		c.closeNow(err)
	}
	var all []*conn
	l.table.Each(func(c *conn) { all = append(all, c) })
	for _, c := range all {
		c.close(err)
	}
}
