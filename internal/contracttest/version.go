// Package contracttest holds the tests of the contract every version keeps
// (docs/contract.md), run by every version: each version's contract_test.go
// describes itself with a Version and calls Run. A behaviour the contract fixes is tested once, here;
// what only one version does (a pool's limits, a reactor's fairness) is
// tested in that version's own package.
package contracttest

import (
	"context"
	"log/slog"
	"net"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/codec"
)

// Server is the contract's server.
type Server interface {
	Register(rcvr any) error
	RegisterName(name string, rcvr any) error
	Serve(ln net.Listener) error
	Shutdown(ctx context.Context) error
	Close() error
}

// Client is the contract's client, with Go adapted to a version-free
// result: the returned channel receives the call's error once it completes
// (the version's Call.Error), and the version's Call.Done must have
// delivered the Call for it to do so.
type Client interface {
	Call(ctx context.Context, serviceMethod string, args, reply any) error
	Go(ctx context.Context, serviceMethod string, args, reply any) <-chan error
	Notify(ctx context.Context, serviceMethod string, args any) error
	Close() error
}

// Options are the contract's options, given to a version's constructors,
// which turn them into its functional options. Zero values mean "not given":
// the version's defaults apply.
type Options struct {
	MaxFrameSize int           // WithMaxFrameSize, both sides
	IdleTimeout  time.Duration // WithIdleTimeout, server only (every version has it)
	Logger       *slog.Logger  // WithLogger, both sides
	Codec        codec.Codec   // WithCodec, client only
}

// Version describes one version to the suite.
type Version struct {
	Name      string
	NewServer func(o Options) Server
	Dial      func(network, address string, o Options) (Client, error)

	// The version's exported errors.
	ErrShutdown     error
	ErrServerClosed error
	// IsServerError reports errors.As(err, new(version.ServerError)).
	IsServerError func(err error) bool
}
