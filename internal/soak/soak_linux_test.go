package soak

import (
	"errors"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// v4 runs on Linux only (for now): elsewhere its Serve returns
// ErrUnsupported.
func init() {
	versions = append(versions, version{
		name:      "v4",
		newServer: func() rpcServer { return epollbatch.NewServer() },
		dial: func(addr string, raw bool) (rpcClient, error) {
			var opts []epollbatch.ClientOption
			if raw {
				opts = append(opts, epollbatch.WithCodec(codec.Raw), epollbatch.WithConns(2), epollbatch.WithPingInterval(250*time.Millisecond))
			}
			c, err := epollbatch.Dial("tcp", addr, opts...)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		serverError: func(err error) (string, bool) {
			var se epollbatch.ServerError
			ok := errors.As(err, &se)
			return string(se), ok
		},
		errShutdown:     epollbatch.ErrShutdown,
		errServerClosed: epollbatch.ErrServerClosed,
	})
}
