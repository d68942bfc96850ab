package benchcmp

import (
	"net"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	connpool "github.com/rpcsteps/rpcsteps/v2-connpool"
)

func v2Impl() Impl {
	return Impl{
		Name: "v2",
		Serve: func(ln net.Listener) (func(), error) {
			s := connpool.NewServer()
			return serveVersion(ln, s.Register, s.Serve, s.Close)
		},
		Dial: func(addr string) (Client, error) {
			return connpool.Dial("tcp", addr, connpool.WithCodec(codec.Raw))
		},
	}
}
