package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// ErrNoEndpoints is wrapped by the error of a call that found no endpoint
// up (none listed, or all backing off after failures), and by Dial's when
// the resolver listed none in time. The error of such a call wraps
// epollbatch.ErrNotSent too: it was sent nowhere.
var ErrNoEndpoints = errors.New("no endpoint up")

// errDead: a backend whose every connection was found dead (by a read or
// write, the server closing it, or pings), seen as a call picked it.
var errDead = errors.New("cluster: connection found dead")

// errClosed is the error of a call of a closed Client.
var errClosed = fmt.Errorf("cluster: %w (%w)", epollbatch.ErrShutdown, epollbatch.ErrNotSent)

// Client calls the methods of a set of servers that a Resolver lists, with
// one epollbatch.Client per server, over which its calls to that server
// multiplex. A Balancer picks the server of each call among those up. A
// Client is safe for concurrent use.
type Client struct {
	opts options

	// ctx ends with Close: the resolver's Watch, the dials and the
	// pauses between them, and the calls waiting for an endpoint stop.
	ctx    context.Context
	cancel context.CancelFunc

	view atomic.Pointer[view] // what calls pick from; replaced at each change

	mu       sync.Mutex
	eps      map[Endpoint]*endpoint // the resolver's current set
	draining map[*endpoint]struct{} // removed, with connections still open
	first    chan struct{}          // closed once the resolver has listed an endpoint
	listed   bool                   // first is closed
	closed   bool                   // Close has begun
	lastErr  error                  // the last failure of any endpoint
	wg       sync.WaitGroup         // the watch, the dials, the closes: what Close waits for
}

// view is what calls see of the endpoints: made, under mu, at each change
// of an endpoint's state, and never changed after.
type view struct {
	up         []*Backend    // the endpoints up, by Endpoint
	connecting int           // endpoints on their first dial, which a call may wait for
	known      int           // endpoints listed
	lastErr    error         // the last failure of any endpoint
	changed    chan struct{} // closed when the next view replaces this one
}

// Dial starts watching r (its Watch runs on a goroutine of the client's
// until Close) and returns the client once r has listed at least one
// endpoint, or fails with ErrNoEndpoints after WithResolveTimeout, or
// when r's Watch fails first. It does not wait for connections: each
// endpoint is dialed (epollbatch.Dial, with WithClientOptions) as it
// appears, and a call made before any is up waits for the first dials
// (see Call).
func Dial(r Resolver, opts ...Option) (*Client, error) {
	if r == nil {
		return nil, fmt.Errorf("cluster: Dial with a nil Resolver: %w", ErrNoEndpoints)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		opts:     newOptions(opts),
		ctx:      ctx,
		cancel:   cancel,
		eps:      make(map[Endpoint]*endpoint),
		draining: make(map[*endpoint]struct{}),
		first:    make(chan struct{}),
	}
	c.view.Store(&view{changed: make(chan struct{})})
	ended := make(chan error, 1)
	c.wg.Go(func() {
		err := r.Watch(ctx, c.update)
		if ctx.Err() == nil { // it ended by itself: the set stays as it is
			if err == nil {
				err = errors.New("cluster: the resolver's Watch returned")
			}
			c.opts.logger.Error("cluster: the resolver stopped; the endpoints stay as last listed", "err", err)
		}
		ended <- err
	})
	timer := time.NewTimer(c.opts.resolveTimeout)
	defer timer.Stop()
	select {
	case <-c.first:
		return c, nil
	case err := <-ended:
		select {
		case <-c.first: // it listed some, then stopped
			return c, nil
		default:
		}
		c.Close()
		return nil, fmt.Errorf("cluster: the resolver failed before listing any endpoint (%w): %w", ErrNoEndpoints, err)
	case <-timer.C:
		c.Close()
		return nil, fmt.Errorf("cluster: the resolver listed no endpoint within %v: %w", c.opts.resolveTimeout, ErrNoEndpoints)
	}
}

// Call calls serviceMethod on one of the servers, chosen by the Balancer
// among those up, waits for the reply and decodes it into reply. A
// method's error is returned as the epollbatch.ServerError it is.
//
// The call is sent again to another server (never to one it already
// tried) only when it provably never reached the first: the dial failed,
// or the connection failed before the request was written
// (epollbatch.ErrNotSent). A call whose request was written, and whose
// connection then failed, may have run: it fails with an error that wraps
// epollbatch.ErrConnLost, unless its ctx was marked Idempotent, in which
// case it is sent to each other server at most once more, as long as ctx
// allows. A server whose connection failed is taken out of the Balancer's
// choice and dialed again after a pause (WithBackoff).
//
// With no server up, Call fails at once with an error that wraps
// ErrNoEndpoints and epollbatch.ErrNotSent, unless some server is being
// dialed for the first time (just listed by the resolver, or just after
// Dial): then it waits for that dial, as long as ctx allows. A call that
// ran into a failed connection on one server and then found no other up
// reports the failure that says most: epollbatch.ErrConnLost if any
// server may have run it.
func (c *Client) Call(ctx context.Context, serviceMethod string, args, reply any) error {
	return c.invoke(ctx, serviceMethod, args, reply, false)
}

// Go calls serviceMethod without waiting, as Call does, on a goroutine of
// the call's own (the choice of a server, and sending again, may wait),
// and sends the Call on done when it completes. A nil done makes a new
// channel (buffered); a done without buffer space panics, since the call
// would block on it.
func (c *Client) Go(ctx context.Context, serviceMethod string, args, reply any, done chan *epollbatch.Call) *epollbatch.Call {
	if done == nil {
		done = make(chan *epollbatch.Call, 10)
	} else if cap(done) == 0 {
		panic("cluster: Go: done channel is unbuffered")
	}
	call := &epollbatch.Call{ServiceMethod: serviceMethod, Args: args, Reply: reply, Done: done}
	go func() {
		call.Error = c.invoke(ctx, serviceMethod, args, reply, false)
		select {
		case done <- call:
		default:
			c.opts.logger.Debug("cluster: Go: done channel full; completion dropped", "method", serviceMethod)
		}
	}()
	return call
}

// Notify calls serviceMethod with args one way, on one of the servers: the
// server runs the method and sends no reply. Notify returns once the
// request is queued for the connection's writer; one that could not be
// queued (epollbatch.ErrNotSent) is queued on another server, as Call
// does.
func (c *Client) Notify(ctx context.Context, serviceMethod string, args any) error {
	return c.invoke(ctx, serviceMethod, args, nil, true)
}

// Close stops the resolver's Watch, the dials and the pauses between them,
// and closes every connection: calls in flight end at once with
// epollbatch.ErrShutdown (and later calls fail with it, wrapping
// epollbatch.ErrNotSent too). It returns once every goroutine of the
// client has ended, but for those of Go calls still delivering their
// outcome; it waits for the resolver's Watch to return. Close may be
// called more than once.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.wg.Wait()
		return nil
	}
	c.closed = true
	var bs []*Backend
	collect := func(e *endpoint) {
		e.cancel()
		for _, b := range e.backends {
			if !b.closing {
				b.closing = true
				bs = append(bs, b)
			}
		}
	}
	for _, e := range c.eps {
		collect(e)
	}
	for e := range c.draining {
		collect(e)
	}
	clear(c.eps)
	clear(c.draining)
	c.publishLocked()
	c.mu.Unlock()
	c.cancel()
	for _, b := range bs {
		b.refs.Or(retired)
		b.cl.Close()
	}
	c.wg.Wait()
	return nil
}

// invoke makes a call, sending it again elsewhere when that is safe (see
// Call).
func (c *Client) invoke(ctx context.Context, serviceMethod string, args, reply any, oneway bool) error {
	var tried []*endpoint
	var lost error // the first error that says the call may have run
	for {
		b, err := c.pick(ctx, serviceMethod, tried)
		if err != nil {
			if lost != nil {
				return lost
			}
			return err
		}
		e := b.ep
		e.calls.Add(1)
		if oneway {
			err = b.cl.Notify(ctx, serviceMethod, args)
		} else {
			err = b.cl.Call(ctx, serviceMethod, args, reply)
		}
		b.release()
		if err == nil {
			return nil
		}
		if errors.As(err, new(epollbatch.ServerError)) {
			return err
		}
		notSent := errors.Is(err, epollbatch.ErrNotSent)
		connLost := !notSent && errors.Is(err, epollbatch.ErrConnLost)
		err = fmt.Errorf("cluster: %s: %w", e.ep, err)
		if !notSent && !connLost { // the call's own failure (its ctx, its arguments), not the server's
			return err
		}
		if !errors.Is(err, epollbatch.ErrShutdown) { // not our own Close
			e.failures.Add(1)
			c.markDown(b, err)
		}
		if connLost {
			if lost == nil {
				lost = err
			}
			if !IsIdempotent(ctx) {
				return err
			}
		}
		if ctx.Err() != nil || c.ctx.Err() != nil {
			if lost != nil {
				return lost
			}
			return err
		}
		tried = append(tried, e)
		c.opts.logger.Debug("cluster: sending the call again, elsewhere", "method", serviceMethod, "endpoint", e.ep.String(), "err", err)
	}
}

// pick returns a backend for the call, counted in its calls in flight,
// among those up that the call has not tried; or waits for the first dial
// of an endpoint when none is up; or says why there is none.
func (c *Client) pick(ctx context.Context, serviceMethod string, tried []*endpoint) (*Backend, error) {
	for {
		v := c.view.Load()
		up := v.up
		if len(tried) > 0 {
			up = slices.DeleteFunc(slices.Clone(up), func(b *Backend) bool { return slices.Contains(tried, b.ep) })
		}
		if n := len(up); n > 0 {
			i := c.opts.balancer.Pick(ctx, serviceMethod, up)
			if i < 0 || i >= n {
				i = (i%n + n) % n
			}
			b := up[i]
			if !b.acquire() { // retired since the view was made: the next view lacks it
				runtime.Gosched()
				continue
			}
			if !b.cl.Connected() {
				b.release()
				c.markDown(b, errDead)
				continue
			}
			return b, nil
		}
		if c.ctx.Err() != nil {
			return nil, errClosed
		}
		if v.connecting == 0 {
			return nil, noEndpoints(serviceMethod, v, len(tried) > 0)
		}
		select {
		case <-v.changed:
		case <-c.ctx.Done():
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: call %s: %w (%w) while waiting for one being dialed: %w", serviceMethod, ErrNoEndpoints, epollbatch.ErrNotSent, ctx.Err())
		}
	}
}

// noEndpoints is the error of a call that found none up.
func noEndpoints(serviceMethod string, v *view, retried bool) error {
	what := "the resolver lists none"
	if v.known > 0 {
		what = fmt.Sprintf("%d listed, none up", v.known)
		if retried {
			what = fmt.Sprintf("%d listed, no other up", v.known)
		}
	}
	if v.lastErr != nil {
		return fmt.Errorf("cluster: call %s: %w (%w): %s; last failure: %v", serviceMethod, ErrNoEndpoints, epollbatch.ErrNotSent, what, v.lastErr)
	}
	return fmt.Errorf("cluster: call %s: %w (%w): %s", serviceMethod, ErrNoEndpoints, epollbatch.ErrNotSent, what)
}

// update takes the resolver's new set (on the Watch's goroutine).
func (c *Client) update(list []Endpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	set := make(map[Endpoint]struct{}, len(list))
	for _, ep := range list {
		if ep.Network == "" {
			ep.Network = "tcp"
		}
		set[ep] = struct{}{}
	}
	var gone []*Backend
	for key, e := range c.eps {
		if _, ok := set[key]; ok {
			continue
		}
		delete(c.eps, key)
		e.removed = true
		e.cancel() // stops its dials
		e.state = StateDraining
		if e.cur != nil {
			gone = append(gone, e.cur)
			e.cur = nil
		}
		if len(e.backends) > 0 {
			c.draining[e] = struct{}{}
		}
		c.opts.logger.Info("cluster: endpoint removed", "endpoint", key.String())
	}
	for key := range set {
		if _, ok := c.eps[key]; ok {
			continue
		}
		e := &endpoint{c: c, ep: key, state: StateConnecting}
		e.ctx, e.cancel = context.WithCancel(c.ctx)
		c.eps[key] = e
		c.wg.Add(1)
		go e.connect(0)
	}
	c.publishLocked()
	if len(c.eps) > 0 && !c.listed { // after the view: Dial's caller calls at once
		c.listed = true
		close(c.first)
	}
	for _, b := range gone { // after the view without them: a call finding one retired picks again at once
		c.retireLocked(b)
	}
}

// publishLocked makes the view of the endpoints as they are now.
func (c *Client) publishLocked() {
	v := &view{changed: make(chan struct{}), known: len(c.eps), lastErr: c.lastErr}
	if !c.closed {
		for _, e := range c.eps {
			switch e.state {
			case StateUp:
				v.up = append(v.up, e.cur)
			case StateConnecting:
				v.connecting++
			}
		}
		slices.SortFunc(v.up, func(a, b *Backend) int { return compareEndpoints(a.ep.ep, b.ep.ep) })
	}
	old := c.view.Swap(v)
	close(old.changed)
}

func compareEndpoints(a, b Endpoint) int {
	return cmp.Or(cmp.Compare(a.Addr, b.Addr), cmp.Compare(a.Network, b.Network))
}

// markDown takes b's endpoint out of the choice after its connection
// failed with err, closes b once its calls in flight end, and dials the
// endpoint again after a pause.
func (c *Client) markDown(b *Backend, err error) {
	e := b.ep
	c.mu.Lock()
	if e.cur != b || c.closed {
		c.mu.Unlock()
		return
	}
	e.cur = nil
	e.state = StateBackoff
	e.lastErr, c.lastErr = err, err
	wait := c.backoff(0)
	e.attempts = 1
	e.retryAt = time.Now().Add(wait)
	c.publishLocked()
	c.retireLocked(b)
	c.wg.Add(1)
	go e.connect(wait)
	c.mu.Unlock()
	c.opts.logger.Warn("cluster: endpoint down", "endpoint", e.ep.String(), "err", err, "retry_in", wait)
}

// retireLocked lets no new call start on b; the last call on it closes it
// (now, if none is in flight).
func (c *Client) retireLocked(b *Backend) {
	if b.refs.Or(retired) == 0 {
		c.closeLocked(b)
	}
}

// closeBackend closes a retired backend whose last call ended.
func (c *Client) closeBackend(b *Backend) {
	c.mu.Lock()
	c.closeLocked(b)
	c.mu.Unlock()
}

// closeLocked closes b on a goroutine of its own (closing a connection
// may wait on the network: a TLS close_notify); once the client is
// closed, Close closes what is left itself.
func (c *Client) closeLocked(b *Backend) {
	if b.closing || c.closed {
		return
	}
	b.closing = true
	c.wg.Go(func() {
		b.cl.Close()
		c.mu.Lock()
		e := b.ep
		e.backends = slices.DeleteFunc(e.backends, func(x *Backend) bool { return x == b })
		if e.removed && len(e.backends) == 0 {
			delete(c.draining, e)
		}
		c.mu.Unlock()
	})
}

// backoff is the pause before the dial after attempt failed ones.
func (c *Client) backoff(attempt int) time.Duration {
	d, most := c.opts.backoffMin, c.opts.backoffMax
	for range attempt {
		if d >= most/2 {
			d = most
			break
		}
		d *= 2
	}
	return d - rand.N(d/5+1)
}

// endpoint is one server the resolver lists, and the client's state of it.
type endpoint struct {
	c      *Client
	ep     Endpoint
	ctx    context.Context // ends when the endpoint is removed, or the client closes
	cancel context.CancelFunc

	calls, failures atomic.Int64

	// Under c.mu.
	state    State
	cur      *Backend   // the backend calls go to, while up
	backends []*Backend // cur and those retired, until they are closed
	removed  bool
	attempts int // failed dials in a row
	lastErr  error
	retryAt  time.Time // the next dial, while backing off
}

// connect dials the endpoint after wait, and again after each failure with
// a growing pause, until it is up, removed, or the client closes.
func (e *endpoint) connect(wait time.Duration) {
	c := e.c
	defer c.wg.Done()
	for {
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-e.ctx.Done():
				t.Stop()
				return
			}
		}
		c.mu.Lock()
		e.retryAt = time.Time{}
		c.mu.Unlock()
		cl, err := epollbatch.DialContext(e.ctx, e.ep.Network, e.ep.Addr, c.opts.clientOpts...)
		if err == nil {
			if !c.up(e, cl) {
				cl.Close()
			}
			return
		}
		if e.ctx.Err() != nil {
			return
		}
		wait = c.dialFailed(e, err)
	}
}

// up makes cl the endpoint's backend; false if the endpoint is gone.
func (c *Client) up(e *endpoint, cl *epollbatch.Client) bool {
	c.mu.Lock()
	if c.closed || e.removed {
		c.mu.Unlock()
		return false
	}
	b := &Backend{ep: e, cl: cl}
	e.cur = b
	e.backends = append(e.backends, b)
	e.state = StateUp
	e.attempts = 0
	c.publishLocked()
	c.mu.Unlock()
	c.opts.logger.Info("cluster: endpoint up", "endpoint", e.ep.String())
	return true
}

// dialFailed records a failed dial of e and returns the pause before the
// next.
func (c *Client) dialFailed(e *endpoint, err error) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	wait := c.backoff(e.attempts)
	if e.attempts < 64 {
		e.attempts++
	}
	e.lastErr, c.lastErr = err, err
	e.retryAt = time.Now().Add(wait)
	if e.state == StateConnecting { // calls waiting for its first dial stop waiting
		e.state = StateBackoff
		c.publishLocked()
	}
	c.opts.logger.Debug("cluster: dial failed", "endpoint", e.ep.String(), "err", err, "retry_in", wait)
	return wait
}

// State is an endpoint's state, as Stats reports it.
type State int

// The states of an endpoint.
const (
	StateConnecting State = iota // listed, its first dial in progress: a call with no endpoint up waits for it
	StateUp                      // connected: calls may go to it
	StateBackoff                 // its connection or its last dial failed: out of the choice until a dial succeeds
	StateDraining                // no longer listed: its calls in flight finish, then its connection closes
)

// String returns the state's name: "connecting", "up", "backoff" or
// "draining".
func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateUp:
		return "up"
	case StateBackoff:
		return "backoff"
	case StateDraining:
		return "draining"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// EndpointStats are figures of one endpoint.
type EndpointStats struct {
	Endpoint  Endpoint
	State     State
	InFlight  int       // calls on it now
	Calls     int64     // calls sent to it since it was listed (one whose connection could not be made counts)
	Failures  int64     // of those, the ones its connection failed (epollbatch.ErrNotSent or ErrConnLost)
	LastError error     // the last failure of its connection or dials; nil if none
	RetryAt   time.Time // StateBackoff: when the next dial starts; zero while it is in progress
}

// Stats returns figures of every endpoint listed, and of those removed
// whose connections are still draining, by Endpoint; none once the client
// is closed. (An endpoint listed again while its old connection drains
// appears twice: draining, and in its new state.) An endpoint up whose
// connections were all found dead is taken out of the choice here, as
// the next call to pick it would.
func (c *Client) Stats() []EndpointStats {
	for _, b := range c.view.Load().up {
		if !b.cl.Connected() {
			c.markDown(b, errDead)
		}
	}
	c.mu.Lock()
	out := make([]EndpointStats, 0, len(c.eps)+len(c.draining))
	add := func(e *endpoint) {
		st := EndpointStats{
			Endpoint:  e.ep,
			State:     e.state,
			Calls:     e.calls.Load(),
			Failures:  e.failures.Load(),
			LastError: e.lastErr,
			RetryAt:   e.retryAt,
		}
		if st.State != StateBackoff {
			st.RetryAt = time.Time{}
		}
		for _, b := range e.backends {
			st.InFlight += b.InFlight()
		}
		out = append(out, st)
	}
	for _, e := range c.eps {
		add(e)
	}
	for e := range c.draining {
		add(e)
	}
	c.mu.Unlock()
	slices.SortStableFunc(out, func(a, b EndpointStats) int {
		return cmp.Or(compareEndpoints(a.Endpoint, b.Endpoint), cmp.Compare(a.State, b.State))
	})
	return out
}

// Idempotent returns a copy of ctx that marks the calls made with it as
// safe to run more than once: a call whose request was sent, and whose
// connection then failed (epollbatch.ErrConnLost), is sent again to
// another server, once to each at most, as long as ctx allows.
func Idempotent(ctx context.Context) context.Context {
	return context.WithValue(ctx, idempotentKey{}, true)
}

// IsIdempotent reports whether ctx was marked by Idempotent.
func IsIdempotent(ctx context.Context) bool {
	v, _ := ctx.Value(idempotentKey{}).(bool)
	return v
}

type idempotentKey struct{}
