package connpool

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// A pooled connection and what it owns for its whole life: its reader, its
// writer and its frame buffer. One call at a time holds it.
//
//	          dial ok                  get                    put(healthy)
//	dialing ─────────▶ in use ◀──────────────── idle ◀──────────────── in use
//	   │                 │ put(broken), or       │ idle too long, or
//	   │ dial failed     │ put with idle full    │ found dead on reuse
//	   ▼                 ▼                       ▼
//	 (slot freed)     closed                  closed
type pconn struct {
	net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	rbuf []byte // the sections of the last frame read

	idleSince time.Time // when it was put back
	reused    bool      // it carried a call before this one
	deadline  bool      // a deadline is set on it

	check connCheck // is the idle connection still open? (conncheck_*.go)
}

// Stats are figures of a client's pool at one moment.
type Stats struct {
	Open    int // connections open: idle, in use, or being dialed
	Idle    int // connections waiting in the pool
	InUse   int // connections held by calls
	Waiting int // calls waiting for a connection because Open reached the maximum

	Dials     int64         // connections dialed since the client was made
	Discarded int64         // connections closed because they broke or were found dead
	Evicted   int64         // idle connections closed for being idle too long or over MaxIdle
	WaitCount int64         // calls that had to wait for a connection
	WaitTotal time.Duration // the time they waited, in all
	Reused    int64         // calls that took an idle connection
}

// errPoolClosed is turned into ErrShutdown by the client.
var errPoolClosed = errors.New("connpool: pool closed")

// pool holds the connections of one client to one address.
type pool struct {
	dial        func(ctx context.Context) (net.Conn, error)
	maxOpen     int
	maxIdle     int
	idleTimeout time.Duration
	bufSize     int

	mu      sync.Mutex
	closed  bool
	idle    []*pconn // a stack: the most recently used on top, the oldest at [0]
	all     map[*pconn]struct{}
	numOpen int           // len(all) plus dials in progress
	waiters []chan *pconn // FIFO; a nil sent on one means "a slot is free: dial"
	evict   *time.Timer   // armed while connections are idle
	stats   Stats
}

func newPool(dial func(context.Context) (net.Conn, error), o *clientOptions) *pool {
	return &pool{
		dial:        dial,
		maxOpen:     o.maxOpen,
		maxIdle:     min(o.maxIdle, o.maxOpen),
		idleTimeout: o.idleConnTimeout,
		bufSize:     o.bufSize,
		all:         make(map[*pconn]struct{}),
	}
}

// get returns a connection for one call: an idle one when there is one
// (unless fresh is set), else a new one while fewer than maxOpen are open,
// else the first one put back, waiting as long as ctx allows.
func (p *pool) get(ctx context.Context, fresh bool) (*pconn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	if n := len(p.idle); n > 0 && !fresh {
		pc := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.stats.Reused++
		p.mu.Unlock()
		return pc, nil
	}
	if p.numOpen < p.maxOpen {
		p.numOpen++
		p.mu.Unlock()
		return p.open(ctx)
	}
	if fresh && len(p.idle) > 0 {
		// At the maximum, a fresh connection replaces an idle one.
		pc := p.idle[0]
		p.idle = append(p.idle[:0], p.idle[1:]...)
		p.removeLocked(pc)
		p.numOpen++ // the slot pc held, now for the dial
		p.mu.Unlock()
		pc.Close()
		return p.open(ctx)
	}

	// Wait for a connection to be put back, or for a slot to free up.
	w := make(chan *pconn, 1)
	p.waiters = append(p.waiters, w)
	p.stats.WaitCount++
	p.mu.Unlock()
	start := time.Now()
	defer func() {
		p.mu.Lock()
		p.stats.WaitTotal += time.Since(start)
		p.mu.Unlock()
	}()

	select {
	case pc, ok := <-w:
		return p.handed(ctx, pc, ok)
	case <-ctx.Done():
		p.mu.Lock()
		for i, x := range p.waiters {
			if x == w {
				p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
				p.mu.Unlock()
				return nil, ctx.Err()
			}
		}
		p.mu.Unlock()
		// Too late: something was handed to us already. Pass it on.
		if pc, ok := <-w; ok {
			if pc != nil {
				p.put(pc, true)
			} else {
				p.release()
			}
		}
		return nil, ctx.Err()
	}
}

// handed turns what a waiter received into a connection.
func (p *pool) handed(ctx context.Context, pc *pconn, ok bool) (*pconn, error) {
	switch {
	case !ok:
		return nil, errPoolClosed
	case pc == nil: // a slot is ours: dial
		return p.open(ctx)
	}
	return pc, nil
}

// open dials a connection for a slot already counted in numOpen.
func (p *pool) open(ctx context.Context) (*pconn, error) {
	c, err := p.dial(ctx)
	if err != nil {
		p.release()
		return nil, err
	}
	pc := &pconn{Conn: c, br: bufio.NewReaderSize(c, p.bufSize), bw: bufio.NewWriterSize(c, p.bufSize)}
	pc.check = newConnCheck(c)
	p.mu.Lock()
	p.stats.Dials++
	if p.closed {
		p.numOpen--
		p.mu.Unlock()
		c.Close()
		return nil, errPoolClosed
	}
	p.all[pc] = struct{}{}
	p.mu.Unlock()
	return pc, nil
}

// release gives back a slot whose dial failed or whose connection was
// discarded: the first waiter may dial.
func (p *pool) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.numOpen--
	p.wakeLocked(nil)
}

// wakeLocked hands pc (or, when pc is nil, a free slot) to the first waiter.
// It reports whether there was one.
func (p *pool) wakeLocked(pc *pconn) bool {
	if len(p.waiters) == 0 {
		return false
	}
	w := p.waiters[0]
	p.waiters = append(p.waiters[:0], p.waiters[1:]...)
	if pc == nil {
		p.numOpen++ // the waiter dials in this slot
	}
	w <- pc // never blocks: each waiter's channel has room for one
	return true
}

// put returns a connection after a call. A healthy one goes to the first
// waiter, or to the idle stack; a broken one is closed and its slot freed.
func (p *pool) put(pc *pconn, healthy bool) {
	p.mu.Lock()
	if !healthy || p.closed {
		if !p.closed {
			p.stats.Discarded++
		}
		p.removeLocked(pc)
		p.wakeLocked(nil)
		p.mu.Unlock()
		pc.Close()
		return
	}
	pc.reused = true
	if p.wakeLocked(pc) {
		p.mu.Unlock()
		return
	}
	if len(p.idle) >= p.maxIdle {
		p.stats.Evicted++
		p.removeLocked(pc)
		p.mu.Unlock()
		pc.Close()
		return
	}
	pc.idleSince = time.Now()
	p.idle = append(p.idle, pc)
	if p.evict == nil {
		p.evict = time.AfterFunc(p.idleTimeout, p.evictIdle)
	}
	p.mu.Unlock()
}

// removeLocked forgets pc; the caller closes it.
func (p *pool) removeLocked(pc *pconn) {
	if _, ok := p.all[pc]; ok {
		delete(p.all, pc)
		p.numOpen--
	}
}

// evictIdle closes the connections idle for longer than idleTimeout. It
// runs on a timer while there are idle connections, so an idle client holds
// no goroutine.
func (p *pool) evictIdle() {
	p.mu.Lock()
	now := time.Now()
	var stale []*pconn
	n := 0 // the oldest are at the bottom of the stack
	for n < len(p.idle) && now.Sub(p.idle[n].idleSince) >= p.idleTimeout {
		stale = append(stale, p.idle[n])
		p.removeLocked(p.idle[n])
		n++
	}
	p.idle = append(p.idle[:0], p.idle[n:]...)
	p.stats.Evicted += int64(n)
	for range n {
		p.wakeLocked(nil)
	}
	if len(p.idle) > 0 && !p.closed {
		p.evict.Reset(p.idle[0].idleSince.Add(p.idleTimeout).Sub(now))
	} else {
		p.evict = nil
	}
	p.mu.Unlock()
	for _, pc := range stale {
		pc.Close()
	}
}

// close closes every connection, idle or in use (calls in flight fail at
// once), and fails the waiters.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	if p.evict != nil {
		p.evict.Stop()
		p.evict = nil
	}
	conns := make([]*pconn, 0, len(p.all))
	for pc := range p.all {
		conns = append(conns, pc)
	}
	p.all = nil // forgotten: a call that puts one back later just closes it
	p.numOpen -= len(conns)
	for _, w := range p.waiters {
		close(w)
	}
	p.waiters, p.idle = nil, nil
	p.mu.Unlock()
	for _, pc := range conns {
		pc.Close()
	}
}

func (p *pool) statsNow() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Open = p.numOpen
	s.Idle = len(p.idle)
	s.InUse = len(p.all) - len(p.idle)
	s.Waiting = len(p.waiters)
	return s
}
