package epollbatch

import (
	"crypto/tls"
	"log/slog"
	"math"
	"runtime"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// A ServerOption configures NewServer.
type ServerOption interface{ applyServer(*serverOptions) }

// A ClientOption configures Dial.
type ClientOption interface{ applyClient(*clientOptions) }

// An Option configures both sides: it is a ServerOption and a ClientOption.
type Option interface {
	ServerOption
	ClientOption
}

type serverOptions struct {
	maxFrameSize     int
	logger           *slog.Logger
	idleTimeout      time.Duration
	bufSize          int
	maxInFlight      int
	maxBytesInFlight int
	reactors         int
	workers          int
	portable         bool
	busyPoll         time.Duration
	interceptors     []ServerInterceptor
	intercept        ServerInterceptor // interceptors chained; nil for none
}

type clientOptions struct {
	maxFrameSize int
	logger       *slog.Logger
	codec        codec.Codec
	dialTimeout  time.Duration
	bufSize      int
	conns        int
	pingInterval time.Duration
	maxQueued    int
	reactors     int
	portable     bool
	busyPoll     time.Duration
	tlsConfig    *tls.Config
	interceptors []ClientInterceptor
	intercept    ClientInterceptor // interceptors chained; nil for none
}

// Defaults of the options.
const (
	DefaultIdleTimeout      = 2 * time.Minute
	DefaultDialTimeout      = 10 * time.Second
	DefaultBufferSize       = 64 << 10 // held only while bytes wait in it: see WithBufferSize
	DefaultMaxInFlight      = 512
	DefaultMaxBytesInFlight = 4 << 20
	DefaultPingInterval     = 30 * time.Second
	DefaultMaxQueuedBytes   = 4 << 20
	DefaultWorkers          = 10_000
	DefaultRingSize         = 512 // a client connection's ring; a server's follows WithMaxInFlight
	DefaultBusyPoll         = 50 * time.Microsecond
)

// The largest values some options take; larger ones are taken as these.
const (
	MaxInFlightCap  = 4096                  // WithMaxInFlight: a busy connection's ring holds a reply for each
	MaxConnsCap     = 1024                  // WithConns
	MinPingInterval = 10 * time.Millisecond // WithPingInterval: shorter positive intervals are taken as this
	MaxWorkersCap   = math.MaxInt32         // WithWorkers: ants counts its workers in an int32
	MaxBusyPoll     = 10 * time.Millisecond // WithBusyPoll
)

func newServerOptions(opts []ServerOption) serverOptions {
	o := serverOptions{
		maxFrameSize:     protocol.DefaultMaxFrameSize,
		logger:           slog.New(slog.DiscardHandler),
		idleTimeout:      DefaultIdleTimeout,
		bufSize:          DefaultBufferSize,
		maxInFlight:      DefaultMaxInFlight,
		maxBytesInFlight: DefaultMaxBytesInFlight,
		reactors:         runtime.GOMAXPROCS(0),
		workers:          DefaultWorkers,
		portable:         portableDefault,
		busyPoll:         DefaultBusyPoll,
	}
	for _, opt := range opts {
		opt.applyServer(&o)
	}
	o.bufSize = min(o.bufSize, o.maxFrameSize) // no frame needs more
	o.intercept = chain(o.interceptors)
	return o
}

func newClientOptions(opts []ClientOption) clientOptions {
	o := clientOptions{
		maxFrameSize: protocol.DefaultMaxFrameSize,
		logger:       slog.New(slog.DiscardHandler),
		codec:        codec.Gob,
		dialTimeout:  DefaultDialTimeout,
		bufSize:      DefaultBufferSize,
		conns:        1,
		pingInterval: DefaultPingInterval,
		maxQueued:    DefaultMaxQueuedBytes,
		portable:     portableDefault,
		busyPoll:     DefaultBusyPoll,
	}
	for _, opt := range opts {
		opt.applyClient(&o)
	}
	o.bufSize = min(o.bufSize, o.maxFrameSize)
	o.intercept = chain(o.interceptors)
	return o
}

type maxFrameSize int

func (n maxFrameSize) applyServer(o *serverOptions) { o.maxFrameSize = int(n) }
func (n maxFrameSize) applyClient(o *clientOptions) { o.maxFrameSize = int(n) }

// WithMaxFrameSize sets the largest frame, header included, this side
// accepts (default protocol.DefaultMaxFrameSize, 16 MiB). A frame announcing
// more is refused on its header and its connection closed: a client's call
// whose reply is refused fails with protocol.ErrFrameTooLarge, and one whose
// request the server refuses fails with a connection error. Any positive
// n is taken (below protocol.HeaderSize, every frame is refused); n <= 0
// keeps the default. Memory for a frame grows with the bytes that arrive,
// not with the size its header announces.
func WithMaxFrameSize(n int) Option {
	if n <= 0 {
		n = protocol.DefaultMaxFrameSize
	}
	return maxFrameSize(n)
}

type busyPoll time.Duration

func (d busyPoll) applyServer(o *serverOptions) { o.busyPoll = time.Duration(d) }
func (d busyPoll) applyClient(o *clientOptions) { o.busyPoll = time.Duration(d) }

// WithBusyPoll sets how long a reactor keeps polling its connections
// without blocking after its last work (default DefaultBusyPoll, 50 µs):
// a request or reply that arrives in that time is taken at once, with no
// thread to wake, at the cost of that much CPU after each burst of work. A
// reactor with nothing to do for that long blocks in epoll_wait, so an
// idle server or client costs nothing. d <= 0 turns it off: a reactor
// blocks as soon as a round finds no work. Values above MaxBusyPoll are
// taken as MaxBusyPoll. The reactors that clients share (without
// WithReactors) poll for the longest value of the clients using them. The
// portable engine has no reactor and ignores it.
func WithBusyPoll(d time.Duration) Option {
	return busyPoll(min(max(d, 0), MaxBusyPoll))
}

type logger struct{ l *slog.Logger }

func (l logger) applyServer(o *serverOptions) { o.logger = l.l }
func (l logger) applyClient(o *clientOptions) { o.logger = l.l }

// WithLogger sends the library's logs to l. Without it (or with nil) the
// library is silent. A server logs panics of methods at Error level and
// failed connections at Debug level.
func WithLogger(l *slog.Logger) Option {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	return logger{l}
}

type clientFunc func(*clientOptions)

func (f clientFunc) applyClient(o *clientOptions) { f(o) }

type serverFunc func(*serverOptions)

func (f serverFunc) applyServer(o *serverOptions) { f(o) }

// WithCodec sets the codec of the client's requests (default codec.Gob).
// The server answers in the codec of each request.
func WithCodec(c codec.Codec) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if c != nil {
			o.codec = c
		}
	})
}

// WithDialTimeout bounds how long connecting may take (default
// DefaultDialTimeout); a call's ctx deadline bounds it too.
func WithDialTimeout(d time.Duration) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if d > 0 {
			o.dialTimeout = d
		}
	})
}

// WithIdleTimeout bounds how long a server waits on a connection for
// progress: for a request to arrive while none is in flight, and for the
// client to take its replies (default DefaultIdleTimeout). A connection that
// makes none in that time is closed, so a peer that vanished or never reads
// costs nothing for long. A client's pings count as traffic. The timing
// wheel's tick is 1/64 of d, at least 10 ms: a connection closes between d
// and d plus a tick (at least 10 ms) after its last progress. d <= 0 keeps
// the default.
func WithIdleTimeout(d time.Duration) ServerOption {
	return serverFunc(func(o *serverOptions) {
		if d > 0 {
			o.idleTimeout = d
		}
	})
}

type bufSize int

func (n bufSize) applyServer(o *serverOptions) { o.bufSize = int(n) }
func (n bufSize) applyClient(o *clientOptions) { o.bufSize = int(n) }

// WithBufferSize sets the size of a connection's input buffer (default
// DefaultBufferSize). Unlike v3's, it is not owned for the connection's
// whole life: a connection takes one from a pool when bytes arrive and
// gives it back once every frame in it is handed over, so idle
// connections hold none, and a large one costs memory only while a
// connection is reading. A frame larger than the buffer gets a larger
// one, grown by doubling as its bytes arrive (up to the frame limit).
// Values above the frame limit are taken as the frame limit; n <= 0 keeps
// the default. The portable engine reads through a buffer of its own for
// each connection's life, of n bytes but at most 4 KiB (a larger frame is
// read past it, into a buffer grown as its bytes arrive).
func WithBufferSize(n int) Option {
	if n <= 0 {
		n = DefaultBufferSize
	}
	return bufSize(n)
}

// WithConns sets how many connections the client spreads its calls over
// (default 1, at most MaxConnsCap). One connection carries any number of
// calls at once; a few can help when one connection's reader or writer
// becomes the bottleneck. Dial connects the first; the others connect on
// their first call. n <= 0 keeps the default.
func WithConns(n int) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if n > 0 {
			o.conns = min(n, MaxConnsCap)
		}
	})
}

// WithPingInterval sets how long a connection may stay silent before the
// client sends a ping (default DefaultPingInterval). A connection that stays
// silent for two intervals more (no pong, no reply) is declared dead: its
// calls fail and the next call connects again. That holds whatever is
// queued for the server: a server that stops reading, so that the
// client's queue is full and no ping can be queued, is found dead all the
// same. Positive intervals below MinPingInterval are taken as it; 0 or
// less disables pings.
func WithPingInterval(d time.Duration) ClientOption {
	if d > 0 { // here, not in the closure: an option may be applied by many Dials at once
		d = max(d, MinPingInterval)
	}
	return clientFunc(func(o *clientOptions) { o.pingInterval = d })
}

// WithMaxQueuedBytes bounds the encoded requests of one connection that
// wait to be written (default DefaultMaxQueuedBytes). Past it, Call and
// Notify wait for room (as long as their ctx allows) and Go waits on a
// goroutine of its own, so that a server that stops reading cannot make
// the client grow without bound. One request is always let in when
// nothing waits, however large; so with n = 1 requests go one at a time.
// (On the portable engine the batch being written is not counted, as in
// v3: up to twice n may be held.) n <= 0 keeps the default.
func WithMaxQueuedBytes(n int) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if n > 0 {
			o.maxQueued = n
		}
	})
}

// WithMaxInFlight bounds the requests (and pings) of one connection that
// the server has read but whose reply it has not yet written (default
// DefaultMaxInFlight, at most MaxInFlightCap). At the bound the server
// stops reading that connection until replies go out: back-pressure,
// instead of more goroutines and memory. Reading resumes below 7/8 of the
// bound (with n = 1, once the reply is written). n <= 0 keeps the default.
func WithMaxInFlight(n int) ServerOption {
	return serverFunc(func(o *serverOptions) {
		if n > 0 {
			o.maxInFlight = min(n, MaxInFlightCap)
		}
	})
}

// WithMaxBytesInFlight is WithMaxInFlight counted in bytes: the requests read
// and the replies not yet written, of one connection (default
// DefaultMaxBytesInFlight). Reading stops at the bound; one request is
// always let in, however large (up to the frame limit). Replies count
// when they exist: a reply that would take the connection past the bound
// while other replies still wait to be written is refused, and the
// caller gets a ServerError that says so ("reply of N bytes refused"),
// so that a client that does not read its replies cannot make the server
// hold more. One reply is always let in when none waits. A client that
// makes many concurrent calls with large replies needs a bound that
// holds them. n <= 0 keeps the default.
func WithMaxBytesInFlight(n int) ServerOption {
	return serverFunc(func(o *serverOptions) {
		if n > 0 {
			o.maxBytesInFlight = n
		}
	})
}

type reactors int

func (n reactors) applyServer(o *serverOptions) { o.reactors = int(n) }
func (n reactors) applyClient(o *clientOptions) { o.reactors = int(n) }

// WithReactors sets how many sub-reactors (epoll goroutines) serve the
// connections. A server has GOMAXPROCS of its own by default. Clients share
// one group of GOMAXPROCS reactors by default (started by the first Dial,
// stopped when the last Client closes); with this option a client has n
// of its own. Each connection belongs to one reactor for its whole life.
// n <= 0 is taken as 1. Connections on the portable engine have no
// reactor; the option does not concern them.
func WithReactors(n int) Option {
	if n <= 0 {
		n = 1
	}
	return reactors(n)
}

// WithWorkers bounds the workers a server runs at once (default
// DefaultWorkers, at most MaxWorkersCap), on an ants/v2 pool of its own,
// each running a request or a batch (on the epoll engine, the quick
// requests of one read share one worker: see batch.go). Workers start on
// demand and leave after a second or two idle. (A hand-off that comes
// while the pool's workers are on their way back from their last task
// runs on a goroutine of its own, within the same bound.) A request, or
// batch, that finds n workers busy is answered at once with a ServerError
// ("server overloaded"), never queued on the reactor; a one-way request
// is dropped (logged at Debug level). n <= 0 keeps the default.
func WithWorkers(n int) ServerOption {
	return serverFunc(func(o *serverOptions) {
		if n > 0 {
			o.workers = min(n, MaxWorkersCap)
		}
	})
}

type portableEngine struct{}

func (portableEngine) applyServer(o *serverOptions) { o.portable = true }
func (portableEngine) applyClient(o *clientOptions) { o.portable = true }

// WithPortableEngine serves (or dials) every connection with the portable
// engine, a reader and a writer goroutine per connection over Go's net,
// even where the epoll reactors could take it. It is the engine of TLS
// connections, of connections without a descriptor of their own, and of
// every system without epoll; this option is for comparing the two, and
// for environments whose epoll is not to be trusted. Programs built with
// the tag rpcsteps_portable use the portable engine everywhere.
func WithPortableEngine() Option { return portableEngine{} }

// WithTLSConfig makes the client speak TLS with cfg: the TLS handshake
// follows the dial and is bounded by the same timeout (WithDialTimeout,
// and the call's ctx). A cfg without a ServerName gets the host of the
// address dialled. TLS connections are driven by the portable engine. A
// server takes TLS by serving a tls.NewListener.
func WithTLSConfig(cfg *tls.Config) ClientOption {
	return clientFunc(func(o *clientOptions) { o.tlsConfig = cfg })
}
