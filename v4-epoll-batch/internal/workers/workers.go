// Package workers is a bounded pool of goroutines that run the handlers of
// v4's reactors, so that a reactor never runs user code and never blocks.
//
// Workers are started on demand, up to the pool's size, and leave after an
// idle period, so an idle server holds none. TrySubmit never waits: when
// every worker is busy and the pool is at its size, it reports false and the
// caller answers "overloaded" instead of queueing without bound.
//
// Why not github.com/panjf2000/ants/v2, which does the same: importing ants
// (v2.12.1) creates its package-level default pool, and with it two
// goroutines, at program start. A library must start nothing at import
// time; this pool starts nothing until its owner submits work, and Close
// ends everything it started.
package workers

import (
	"sync"
	"sync/atomic"
	"time"
)

// Pool runs tasks on at most Size goroutines.
type Pool struct {
	size int
	idle time.Duration

	tasks   chan func() // unbuffered: a send succeeds only into an idle worker
	done    chan struct{}
	wg      sync.WaitGroup
	running atomic.Int32 // workers alive
	busy    atomic.Int32 // workers running a task
	mu      sync.Mutex   // serialises starting workers against Close
	closed  bool
}

// New returns a pool of at most size workers, each leaving after idle
// without work.
func New(size int, idle time.Duration) *Pool {
	return &Pool{size: max(size, 1), idle: max(idle, time.Millisecond), tasks: make(chan func()), done: make(chan struct{})}
}

// TrySubmit runs task on a worker: an idle one, or a new one while the pool
// is below its size. It reports false, without waiting, when neither is
// possible or the pool is closed.
func (p *Pool) TrySubmit(task func()) bool {
	select {
	case p.tasks <- task: // an idle worker took it
		return true
	default:
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || int(p.running.Load()) >= p.size {
		return false
	}
	p.running.Add(1)
	p.wg.Add(1)
	go p.work(task)
	return true
}

func (p *Pool) work(task func()) {
	defer p.wg.Done()
	defer p.running.Add(-1)
	// The idle timer is not reset per task (that takes a timer lock on
	// every request): a worker notes that it worked, and leaves when the
	// timer fires twice in a row without work in between. It leaves after
	// one to two idle periods.
	timer := time.NewTimer(p.idle)
	defer timer.Stop()
	worked := false
	for {
		if task != nil {
			p.busy.Add(1)
			task()
			p.busy.Add(-1)
			task, worked = nil, true
		}
		select {
		case task = <-p.tasks:
		case <-timer.C:
			if !worked {
				return
			}
			worked = false
			timer.Reset(p.idle)
		case <-p.done:
			return
		}
	}
}

// Running is the number of workers alive; Busy, of those running a task.
func (p *Pool) Running() int { return int(p.running.Load()) }

// Busy is the number of workers running a task now.
func (p *Pool) Busy() int { return int(p.busy.Load()) }

// Size is the most workers the pool runs at once.
func (p *Pool) Size() int { return p.size }

// Close stops the pool: no task is accepted after it, idle workers leave at
// once, and busy ones when their task returns. Close waits for them.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	p.wg.Wait()
}
