package pipeline

import (
	"log/slog"
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
}

// Defaults of the options.
const (
	DefaultIdleTimeout      = 2 * time.Minute
	DefaultDialTimeout      = 10 * time.Second
	DefaultBufferSize       = 4096
	DefaultMaxInFlight      = 512
	DefaultMaxBytesInFlight = 4 << 20
	DefaultPingInterval     = 30 * time.Second
	DefaultMaxQueuedBytes   = 4 << 20
)

// The bounds of some options; values past them are taken as them.
const (
	MaxBufferSize   = 16 << 20              // WithBufferSize: a connection owns its buffer for its whole life
	MaxConnsCap     = 1024                  // WithConns
	MinPingInterval = 10 * time.Millisecond // WithPingInterval: shorter positive intervals are taken as this
)

func newServerOptions(opts []ServerOption) serverOptions {
	o := serverOptions{
		maxFrameSize:     protocol.DefaultMaxFrameSize,
		logger:           slog.New(slog.DiscardHandler),
		idleTimeout:      DefaultIdleTimeout,
		bufSize:          DefaultBufferSize,
		maxInFlight:      DefaultMaxInFlight,
		maxBytesInFlight: DefaultMaxBytesInFlight,
	}
	for _, opt := range opts {
		opt.applyServer(&o)
	}
	o.bufSize = min(o.bufSize, o.maxFrameSize, MaxBufferSize) // no frame needs more
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
	}
	for _, opt := range opts {
		opt.applyClient(&o)
	}
	o.bufSize = min(o.bufSize, o.maxFrameSize, MaxBufferSize)
	return o
}

type maxFrameSize int

func (n maxFrameSize) applyServer(o *serverOptions) { o.maxFrameSize = int(n) }
func (n maxFrameSize) applyClient(o *clientOptions) { o.maxFrameSize = int(n) }

// WithMaxFrameSize sets the largest frame, header included, this side
// accepts (default protocol.DefaultMaxFrameSize, 16 MiB). A frame announcing
// more is refused on its header and its connection closed: a client's call
// whose reply is refused fails with protocol.ErrFrameTooLarge, and one whose
// request the server refuses fails with a connection error. Any positive n
// is taken (below protocol.HeaderSize, every frame is refused); n <= 0 keeps
// the default. Memory for a frame grows with the bytes that arrive, not with
// the size its header announces.
func WithMaxFrameSize(n int) Option {
	if n <= 0 {
		n = protocol.DefaultMaxFrameSize
	}
	return maxFrameSize(n)
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
// DefaultDialTimeout); a call's ctx deadline bounds it too. A dial that
// takes longer fails with an error for which
// errors.Is(err, context.DeadlineExceeded). d <= 0 keeps the default.
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
// costs nothing for long. A client's pings count as traffic, and so does
// each part of a reply the client takes: a large reply read slowly but
// steadily is not cut off. d is taken as given: one shorter than a round
// trip closes connections before their first request arrives, and their
// calls fail with a connection error. d <= 0 keeps the default.
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

// WithBufferSize sets the size of the read buffer each connection owns for
// its whole life (default DefaultBufferSize). Larger frames are read through
// it in pieces, so any size works: below 16 bytes (bufio's least) it is 16.
// Values above the frame limit, or above MaxBufferSize, are taken as the
// smaller of the two, since no frame needs more. n <= 0 keeps the default.
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
// silent for two intervals more (no pong, no byte of a reply) is declared
// dead: its calls fail and the next call connects again. That holds
// whatever is queued for the server: the ping does not wait for room in
// the queue, so a server that stops reading is found dead all the same.
// Positive intervals below MinPingInterval are taken as it; 0 or less
// disables pings.
func WithPingInterval(d time.Duration) ClientOption {
	if d > 0 { // here, not in the closure: an option may be applied by many Dials at once
		d = max(d, MinPingInterval)
	}
	return clientFunc(func(o *clientOptions) { o.pingInterval = d })
}

// WithMaxQueuedBytes bounds the encoded requests waiting for the writer of
// one connection (default DefaultMaxQueuedBytes). Past it, Call and Notify
// wait for room (as long as their ctx allows) and Go waits on a goroutine of
// its own, so that a server that stops reading cannot make the client grow
// without bound. One request is always let in when the queue is empty,
// however large; so with n = 1 requests are queued one at a time. n <= 0
// keeps the default.
func WithMaxQueuedBytes(n int) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if n > 0 {
			o.maxQueued = n
		}
	})
}

// WithMaxInFlight bounds the requests (and pings) of one connection that
// the server has read but whose reply it has not yet written (default
// DefaultMaxInFlight). At the bound the server stops reading that
// connection until replies go out: back-pressure, instead of more
// goroutines and memory. With n = 1 a connection's requests run one after
// another. Any positive n is taken (WithMaxBytesInFlight still bounds the
// memory); n <= 0 keeps the default.
func WithMaxInFlight(n int) ServerOption {
	return serverFunc(func(o *serverOptions) {
		if n > 0 {
			o.maxInFlight = n
		}
	})
}

// WithMaxBytesInFlight is WithMaxInFlight counted in bytes: the requests read
// and the replies not yet written, of one connection (default
// DefaultMaxBytesInFlight). Reading stops at the bound; one request is
// always let in, however large (up to the frame limit).
//
// Replies count when they exist: a reply that would take the connection
// past the bound while other replies still wait to be written is refused,
// and its caller gets a ServerError that says so ("pipeline: reply of N
// bytes refused: the connection already holds M bytes not yet written
// ..."), so that a client that does not read its replies cannot make the
// server hold more. (The error reply in its place, like a pong, is a few
// hundred bytes at most, and always goes.) One reply is always let in
// when none waits, however large (up to the frame limit): a single large
// call always works. A client that makes many concurrent calls with large
// replies needs a bound that holds them. With n = 1 a connection's
// requests run one after another, and no reply is refused. n <= 0 keeps
// the default.
func WithMaxBytesInFlight(n int) ServerOption {
	return serverFunc(func(o *serverOptions) {
		if n > 0 {
			o.maxBytesInFlight = n
		}
	})
}
