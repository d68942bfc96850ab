//go:build !linux

package epollbatch

import (
	"context"
	"errors"
	"net"
)

// ErrUnsupported is returned by Serve and Dial on systems other than Linux.
var ErrUnsupported = errors.New("epollbatch: needs Linux (epoll)")

// Server is the epoll server; on this system it cannot serve.
type Server struct{ closed chan struct{} }

// NewServer returns a server that cannot serve on this system.
func NewServer(opts ...ServerOption) *Server { return &Server{} }

// Register is accepted and ignored: nothing can be served here.
func (s *Server) Register(rcvr any) error { return nil }

// RegisterName is accepted and ignored: nothing can be served here.
func (s *Server) RegisterName(name string, rcvr any) error { return nil }

// Serve returns ErrUnsupported.
func (s *Server) Serve(ln net.Listener) error { ln.Close(); return ErrUnsupported }

// Shutdown does nothing.
func (s *Server) Shutdown(ctx context.Context) error { return nil }

// Close does nothing.
func (s *Server) Close() error { return nil }

// Client is the epoll client; on this system it cannot connect.
type Client struct{}

// Dial returns ErrUnsupported.
func Dial(network, address string, opts ...ClientOption) (*Client, error) {
	return nil, ErrUnsupported
}

// Call returns ErrUnsupported.
func (c *Client) Call(ctx context.Context, serviceMethod string, args, reply any) error {
	return ErrUnsupported
}

// Go completes at once with ErrUnsupported.
func (c *Client) Go(ctx context.Context, serviceMethod string, args, reply any, done chan *Call) *Call {
	if done == nil {
		done = make(chan *Call, 1)
	}
	call := &Call{ServiceMethod: serviceMethod, Args: args, Reply: reply, Done: done, Error: ErrUnsupported}
	done <- call
	return call
}

// Notify returns ErrUnsupported.
func (c *Client) Notify(ctx context.Context, serviceMethod string, args any) error {
	return ErrUnsupported
}

// Close does nothing.
func (c *Client) Close() error { return nil }
