package shortconn

import (
	"context"
	"errors"
	"testing"

	"github.com/rpcsteps/rpcsteps/internal/contracttest"
)

// version describes v1 to the contract tests.
var version = contracttest.Version{
	Name: "v1-shortconn",
	NewServer: func(o contracttest.Options) contracttest.Server {
		return NewServer(serverOpts(o)...)
	},
	Dial: func(network, address string, o contracttest.Options) (contracttest.Client, error) {
		c, err := Dial(network, address, clientOpts(o)...)
		if err != nil {
			return nil, err
		}
		return contractClient{c}, nil
	},
	ErrShutdown:     ErrShutdown,
	ErrServerClosed: ErrServerClosed,
	IsServerError:   func(err error) bool { return errors.As(err, new(ServerError)) },
	// Serve accepts through the listener it is given.
}

func serverOpts(o contracttest.Options) []ServerOption {
	var opts []ServerOption
	if o.MaxFrameSize != 0 {
		opts = append(opts, WithMaxFrameSize(o.MaxFrameSize))
	}
	if o.IdleTimeout != 0 {
		opts = append(opts, WithIdleTimeout(o.IdleTimeout))
	}
	if o.Logger != nil {
		opts = append(opts, WithLogger(o.Logger))
	}
	return opts
}

func clientOpts(o contracttest.Options) []ClientOption {
	var opts []ClientOption
	if o.MaxFrameSize != 0 {
		opts = append(opts, WithMaxFrameSize(o.MaxFrameSize))
	}
	if o.Logger != nil {
		opts = append(opts, WithLogger(o.Logger))
	}
	if o.Codec != nil {
		opts = append(opts, WithCodec(o.Codec))
	}
	return opts
}

// contractClient adapts Go to the suite's version-free form.
type contractClient struct{ *Client }

func (c contractClient) Go(ctx context.Context, serviceMethod string, args, reply any) <-chan error {
	done := make(chan *Call, 1)
	call := c.Client.Go(ctx, serviceMethod, args, reply, done)
	errc := make(chan error, 1)
	go func() {
		got := <-done
		if got != call {
			errc <- errors.New("contract adapter: Done delivered another Call")
			return
		}
		errc <- got.Error
	}()
	return errc
}

func TestContract(t *testing.T) { contracttest.Run(t, version) }
