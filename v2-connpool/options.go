package connpool

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
	maxFrameSize int
	logger       *slog.Logger
	idleTimeout  time.Duration
	bufSize      int
}

type clientOptions struct {
	maxFrameSize    int
	logger          *slog.Logger
	codec           codec.Codec
	dialTimeout     time.Duration
	bufSize         int
	maxOpen         int
	maxIdle         int
	idleConnTimeout time.Duration
}

// Defaults of the options.
const (
	DefaultIdleTimeout     = 2 * time.Minute
	DefaultDialTimeout     = 10 * time.Second
	DefaultBufferSize      = 4096
	DefaultMaxOpenConns    = 64
	DefaultIdleConnTimeout = 90 * time.Second
)

func newServerOptions(opts []ServerOption) serverOptions {
	o := serverOptions{
		maxFrameSize: protocol.DefaultMaxFrameSize,
		logger:       slog.New(slog.DiscardHandler),
		idleTimeout:  DefaultIdleTimeout,
		bufSize:      DefaultBufferSize,
	}
	for _, opt := range opts {
		opt.applyServer(&o)
	}
	return o
}

func newClientOptions(opts []ClientOption) clientOptions {
	o := clientOptions{
		maxFrameSize:    protocol.DefaultMaxFrameSize,
		logger:          slog.New(slog.DiscardHandler),
		codec:           codec.Gob,
		dialTimeout:     DefaultDialTimeout,
		bufSize:         DefaultBufferSize,
		maxOpen:         DefaultMaxOpenConns,
		idleConnTimeout: DefaultIdleConnTimeout,
	}
	for _, opt := range opts {
		opt.applyClient(&o)
	}
	if o.maxIdle <= 0 || o.maxIdle > o.maxOpen {
		o.maxIdle = o.maxOpen
	}
	return o
}

type maxFrameSize int

func (n maxFrameSize) applyServer(o *serverOptions) { o.maxFrameSize = int(n) }
func (n maxFrameSize) applyClient(o *clientOptions) { o.maxFrameSize = int(n) }

// WithMaxFrameSize sets the largest frame, header included, this side
// accepts (default protocol.DefaultMaxFrameSize, 16 MiB). A frame announcing
// more is refused on its header and its connection closed. n <= 0 keeps the
// default.
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
// DefaultDialTimeout); a call's ctx deadline bounds it too.
func WithDialTimeout(d time.Duration) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if d > 0 {
			o.dialTimeout = d
		}
	})
}

// WithIdleTimeout bounds how long a server waits on a connection for
// progress: for the next request to arrive, and for the client to take its
// reply (default DefaultIdleTimeout). A connection that makes none in that
// time is closed, so idle pooled connections do not pile up, and a peer that
// vanished or never reads costs nothing for long.
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

// WithBufferSize sets the size of the read buffer and of the write buffer
// each connection owns for its whole life (default DefaultBufferSize).
// Larger frames are read and written through them in pieces.
func WithBufferSize(n int) Option {
	if n <= 0 {
		n = DefaultBufferSize
	}
	return bufSize(n)
}

// WithMaxOpenConns bounds the connections the client holds open, idle or
// in use (default DefaultMaxOpenConns). A call that finds none free waits
// for one, as long as its ctx allows.
func WithMaxOpenConns(n int) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if n > 0 {
			o.maxOpen = n
		}
	})
}

// WithMaxIdleConns bounds the connections kept open between calls (default:
// as many as WithMaxOpenConns allows). A connection put back when the pool
// holds that many idle ones is closed.
func WithMaxIdleConns(n int) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if n > 0 {
			o.maxIdle = n
		}
	})
}

// WithIdleConnTimeout closes connections that stay idle in the pool for
// longer than d (default DefaultIdleConnTimeout). Keep it shorter than the
// server's idle timeout, so that the client, not the server, ends an idle
// connection.
func WithIdleConnTimeout(d time.Duration) ClientOption {
	return clientFunc(func(o *clientOptions) {
		if d > 0 {
			o.idleConnTimeout = d
		}
	})
}
