package etcd

import (
	"log/slog"
	"math/rand/v2"
	"time"
)

// Defaults of the options.
const (
	DefaultTTL        = 10 * time.Second       // WithTTL
	DefaultTimeout    = 5 * time.Second        // WithTimeout
	DefaultMinBackoff = 100 * time.Millisecond // WithBackoff
	DefaultMaxBackoff = 5 * time.Second        // WithBackoff
)

// An Option configures Register, RegisterServer or NewResolver. Each
// takes every Option and ignores those that are not its own.
type Option func(*options)

type options struct {
	ttl           time.Duration
	timeout       time.Duration
	minBackoff    time.Duration
	maxBackoff    time.Duration
	shutdownDelay time.Duration
	logger        *slog.Logger
}

func newOptions(opts []Option) options {
	o := options{
		ttl:        DefaultTTL,
		timeout:    DefaultTimeout,
		minBackoff: DefaultMinBackoff,
		maxBackoff: DefaultMaxBackoff,
		logger:     slog.New(slog.DiscardHandler),
	}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	return o
}

// WithTTL sets the TTL of a registration's lease (Register): how long its
// key outlives the last keepalive that reached etcd, hence how long a
// server that crashed or froze may still be resolved. 0 means DefaultTTL.
// A negative TTL makes Register fail. etcd counts in whole seconds: the
// TTL is rounded up to one, and etcd raises it to its minimum lease TTL
// (see the package documentation); one longer than etcd's maximum
// (9,000,000,000 s) makes Register fail with etcd's error. Keepalives go
// every third of the TTL.
func WithTTL(d time.Duration) Option {
	return func(o *options) {
		if d == 0 {
			d = DefaultTTL
		}
		o.ttl = d
	}
}

// WithTimeout bounds each request to etcd (Register, Close, the
// resolver's reads); 0 or less means DefaultTimeout. Close, and so a
// server's Shutdown with RegisterServer, waits at most this long for
// etcd.
func WithTimeout(d time.Duration) Option {
	return func(o *options) {
		if d <= 0 {
			d = DefaultTimeout
		}
		o.timeout = d
	}
}

// WithBackoff sets the pauses between attempts after a failure: a
// Registration registering again after losing its lease, a resolver
// reading the prefix again after its watch failed. The first pause is
// minimum, each next one twice the last, up to maximum, each randomised
// by ±20%. Values of 0 or less mean the defaults, and maximum is raised
// to minimum if below it.
func WithBackoff(minimum, maximum time.Duration) Option {
	return func(o *options) {
		if minimum <= 0 {
			minimum = DefaultMinBackoff
		}
		if maximum <= 0 {
			maximum = DefaultMaxBackoff
		}
		o.minBackoff, o.maxBackoff = minimum, max(minimum, maximum)
	}
}

// WithShutdownDelay makes RegisterServer's shutdown hook wait d after it
// withdrew the server's key, before the server's Shutdown goes on to
// close the listeners and stop reading requests: time for resolvers and
// their clients to stop choosing the server, so that a request a client
// sends in that window on a connection it has is still read and
// answered. (The server takes no new connection once its shutdown has
// begun.) The default, 0, goes on at once. It delays Close too, which
// runs the same hook.
func WithShutdownDelay(d time.Duration) Option {
	return func(o *options) { o.shutdownDelay = max(d, 0) }
}

// WithLogger logs lost leases, registrations renewed, failed watches and
// values that do not parse on l. Without it, or with nil, nothing is
// logged.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l == nil {
			l = slog.New(slog.DiscardHandler)
		}
		o.logger = l
	}
}

// next returns the pause after one of last: minBackoff first, then
// doubling up to maxBackoff.
func (o *options) next(last time.Duration) time.Duration {
	if last <= 0 {
		return o.minBackoff
	}
	return min(2*last, o.maxBackoff)
}

// jitter returns d randomised by ±20%, so that many servers that lost
// etcd together do not come back to it in step.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
