package benchcmp

import (
	"net"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	shortconn "github.com/rpcsteps/rpcsteps/v1-shortconn"
)

// serveVersion adapts a version's server to Impl.Serve: Serve runs until
// stop, which closes the server and waits for Serve to return.
func serveVersion(ln net.Listener, register func(any) error, serve func(net.Listener) error, closeFn func() error) (func(), error) {
	if err := register(Echo{}); err != nil {
		return nil, err
	}
	served := make(chan error, 1)
	go func() { served <- serve(ln) }()
	return func() {
		closeFn()
		<-served
	}, nil
}

func v1Impl() Impl {
	return Impl{
		Name: "v1",
		Serve: func(ln net.Listener) (func(), error) {
			s := shortconn.NewServer()
			return serveVersion(ln, s.Register, s.Serve, s.Close)
		},
		Dial: func(addr string) (Client, error) {
			return shortconn.Dial("tcp", addr, shortconn.WithCodec(codec.Raw))
		},
	}
}
