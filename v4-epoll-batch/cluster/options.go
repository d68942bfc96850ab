package cluster

import (
	"log/slog"
	"time"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// Defaults of the options.
const (
	DefaultResolveTimeout = 10 * time.Second       // WithResolveTimeout
	DefaultBackoffMin     = 100 * time.Millisecond // WithBackoff
	DefaultBackoffMax     = 10 * time.Second       // WithBackoff
)

// An Option configures Dial.
type Option func(*options)

type options struct {
	balancer       Balancer
	clientOpts     []epollbatch.ClientOption
	logger         *slog.Logger
	resolveTimeout time.Duration
	backoffMin     time.Duration
	backoffMax     time.Duration
}

func newOptions(opts []Option) options {
	o := options{
		logger:         slog.New(slog.DiscardHandler),
		resolveTimeout: DefaultResolveTimeout,
		backoffMin:     DefaultBackoffMin,
		backoffMax:     DefaultBackoffMax,
	}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	if o.balancer == nil {
		o.balancer = RoundRobin()
	}
	o.backoffMax = max(o.backoffMax, o.backoffMin)
	return o
}

// WithBalancer sets how each call's server is chosen among those up
// (default RoundRobin). nil keeps the default.
func WithBalancer(b Balancer) Option {
	return func(o *options) {
		if b != nil {
			o.balancer = b
		}
	}
}

// WithClientOptions passes opts to the epollbatch.Dial of every endpoint:
// TLS (epollbatch.WithTLSConfig), interceptors, the codec, pings
// (epollbatch.WithPingInterval, which is how a server that vanished
// without closing its connections is found dead), the dial timeout.
// Several of these options add up, in order.
func WithClientOptions(opts ...epollbatch.ClientOption) Option {
	return func(o *options) { o.clientOpts = append(o.clientOpts, opts...) }
}

// WithLogger sends the client's logs to l: endpoints coming up and going
// down at Info and Warn level, failed dials and calls sent again at Debug
// level, a resolver that failed at Error level. Without it (or with nil)
// the client is silent. It is not passed to the epollbatch clients (see
// WithClientOptions).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithResolveTimeout bounds how long Dial waits for the resolver's first
// endpoints (default DefaultResolveTimeout); past it Dial fails with
// ErrNoEndpoints. d <= 0 keeps the default. (A timeout shorter than the
// resolver's first answer fails Dial, even for Static, whose answer comes
// from a goroutine: keep it well above a millisecond.)
func WithResolveTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.resolveTimeout = d
		}
	}
}

// WithBackoff sets the pauses before dialing again an endpoint whose
// connection failed, or whose dial did: min before the first attempt,
// doubling after each failed one up to max (defaults DefaultBackoffMin
// and DefaultBackoffMax). Each pause is shortened at random by up to a
// fifth, so that clients that lost the same server do not all come back
// at once; a successful dial starts again from min. min <= 0 and max <= 0
// keep their defaults; a max below min is taken as min.
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) {
		if min > 0 {
			o.backoffMin = min
		}
		if max > 0 {
			o.backoffMax = max
		}
	}
}
