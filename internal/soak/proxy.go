package soak

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Faults says which faults a Proxy injects, and how often. The zero value
// injects none: the proxy then only copies bytes.
type Faults struct {
	// Seed seeds the faults. Each direction of each connection draws from
	// its own math/rand/v2 PCG source, seeded with Seed and the
	// connection's number, so the same Seed makes the same choices for the
	// n-th connection (which bytes arrive when still depends on timing).
	Seed uint64

	// Split cuts each chunk read from one side into 1 to 4 pieces at
	// random points, each written on its own, so that the peer's reads
	// end at arbitrary places in its frames (a header cut in two, a
	// one-byte piece, ...).
	Split bool

	// DelayProbability is the chance (0 to 1) that a piece waits before it
	// is written. The wait delays everything behind it in that direction,
	// as a slow network would: the order of the bytes is kept.
	DelayProbability float64

	// MaxDelay bounds a delay. Nine delays in ten are short, up to
	// MaxDelay/10; the tenth may be up to MaxDelay.
	MaxDelay time.Duration

	// ResetProbability is the chance (0 to 1), per piece, that the
	// connection is reset instead of the piece being written: the peers
	// see an RST, most often with a frame half sent.
	ResetProbability float64

	// MeanTimeToReset, if positive, resets each connection after a random
	// time drawn from an exponential distribution with this mean, whatever
	// it is doing at that moment (idle, in the middle of a frame, ...).
	MeanTimeToReset time.Duration
}

// Stats are the counters of a Proxy, since it started.
type Stats struct {
	Conns  int64 // connections accepted
	Bytes  int64 // bytes written to the peers, both directions
	Splits int64 // extra pieces made by splitting chunks
	Delays int64 // pieces delayed
	Resets int64 // connections reset on purpose (not counting Close)
}

// Proxy is a TCP proxy for tests: it accepts connections on 127.0.0.1,
// dials its target for each, and copies the bytes both ways while it
// injects the faults of its Faults. Its methods are safe for concurrent
// use.
type Proxy struct {
	target string
	faults Faults
	ln     net.Listener

	ctx    context.Context // ends at Close: dials and delays stop
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	links  map[*link]struct{}
	closed bool
	nextID uint64

	conns, bytes, splits, delays, resets atomic.Int64
}

// NewProxy starts a proxy to target (a TCP address, host:port) listening on
// 127.0.0.1 at a port of its own; Addr says which.
func NewProxy(target string, faults Faults) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: target,
		faults: faults,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		links:  make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the address the proxy listens on, for clients to dial.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Conns:  p.conns.Load(),
		Bytes:  p.bytes.Load(),
		Splits: p.splits.Load(),
		Delays: p.delays.Load(),
		Resets: p.resets.Load(),
	}
}

// Close stops the listener, closes every connection (both sides) and waits
// for the proxy's goroutines to end. It may be called more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	p.cancel()
	err := p.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // closed before
	}
	for _, l := range links {
		l.close(false)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Temporary trouble (EMFILE, ...): pause, as net/http does.
			select {
			case <-time.After(5 * time.Millisecond):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			nc.Close()
			return
		}
		id := p.nextID
		p.nextID++
		p.wg.Add(1)
		p.mu.Unlock()
		p.conns.Add(1)
		go p.serve(id, nc.(*net.TCPConn))
	}
}

// serve dials the target for the accepted connection cc and runs the link
// between them.
func (p *Proxy) serve(id uint64, cc *net.TCPConn) {
	defer p.wg.Done()
	d := net.Dialer{Timeout: 5 * time.Second}
	nc, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		cc.SetLinger(0)
		cc.Close()
		return
	}
	l := &link{p: p, client: cc, server: nc.(*net.TCPConn)}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.close(false)
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()

	if mean := p.faults.MeanTimeToReset; mean > 0 {
		r := rand.New(rand.NewPCG(p.faults.Seed, 3*id+2))
		after := time.Duration(r.ExpFloat64() * float64(mean))
		l.fired.Add(1)
		l.timer = time.AfterFunc(after, func() { defer l.fired.Done(); l.close(true) })
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.pipe(l.server, l.client, rand.New(rand.NewPCG(p.faults.Seed, 3*id))) }()
	go func() { defer wg.Done(); l.pipe(l.client, l.server, rand.New(rand.NewPCG(p.faults.Seed, 3*id+1))) }()
	wg.Wait()
	l.close(false)
	if l.timer != nil && l.timer.Stop() {
		l.fired.Done() // it will not fire
	}
	l.fired.Wait() // it fired: let it end

	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// link is one proxied connection: the accepted side and the dialled side.
type link struct {
	p              *Proxy
	client, server *net.TCPConn
	timer          *time.Timer    // resets the link after a random time; nil if none
	fired          sync.WaitGroup // the timer's func, until it is stopped or has run

	once  sync.Once
	halfs atomic.Int32 // directions that ended with EOF
}

// close closes both sides, once. With reset set it sets SetLinger(0)
// first, so that both peers get an RST, and counts the reset.
func (l *link) close(reset bool) {
	l.once.Do(func() {
		if reset {
			l.p.resets.Add(1)
			l.client.SetLinger(0)
			l.server.SetLinger(0)
		}
		l.client.Close()
		l.server.Close()
	})
}

// pipe copies from src to dst, injecting faults, until src ends or the
// link breaks. At EOF it passes the half-close on; when both directions
// have ended so, or on any error, it closes the link.
func (l *link) pipe(dst, src *net.TCPConn, r *rand.Rand) {
	f := &l.p.faults
	buf := make([]byte, 32<<10)
	var cuts [4]int
	for {
		n, err := src.Read(buf)
		if n > 0 {
			// Cut buf[:n] into pieces: cuts holds their ends.
			pieces := 1
			if f.Split && n > 1 {
				pieces = 1 + r.IntN(min(4, n))
				for i := 0; i < pieces-1; i++ {
					cuts[i] = 1 + r.IntN(n-1)
				}
				slices.Sort(cuts[:pieces-1])
			}
			cuts[pieces-1] = n
			start := 0
			for _, end := range cuts[:pieces] {
				if end <= start { // two cuts at one place: an empty piece
					continue
				}
				if f.ResetProbability > 0 && r.Float64() < f.ResetProbability {
					l.close(true)
					return
				}
				if f.DelayProbability > 0 && f.MaxDelay > 0 && r.Float64() < f.DelayProbability {
					limit := f.MaxDelay / 10
					if r.IntN(10) == 0 {
						limit = f.MaxDelay
					}
					l.p.delays.Add(1)
					if !l.sleep(time.Duration(r.Int64N(int64(limit) + 1))) {
						return
					}
				}
				if start > 0 {
					l.p.splits.Add(1)
				}
				w, werr := dst.Write(buf[start:end])
				l.p.bytes.Add(int64(w))
				if werr != nil {
					l.close(false)
					return
				}
				start = end
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				dst.CloseWrite()
				if l.halfs.Add(1) < 2 {
					return // the other direction goes on
				}
			}
			l.close(false)
			return
		}
	}
}

// sleep waits d, or less if the proxy is closed; it reports whether the
// whole wait passed.
func (l *link) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.p.ctx.Done():
		return false
	}
}
