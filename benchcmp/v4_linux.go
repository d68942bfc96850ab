package benchcmp

import (
	"net"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// v4Impls is v4 where it runs: Linux.
func v4Impls() []Impl {
	return []Impl{{
		Name: "v4",
		Serve: func(ln net.Listener) (func(), error) {
			s := epollbatch.NewServer()
			return serveVersion(ln, s.Register, s.Serve, s.Close)
		},
		Dial: func(addr string) (Client, error) {
			c, err := epollbatch.Dial("tcp", addr, epollbatch.WithCodec(codec.Raw))
			if err != nil {
				return nil, err
			}
			return v4Client{c}, nil
		},
	}}
}

// v4Client reports how many requests its reactor wrote per writev.
type v4Client struct{ *epollbatch.Client }

func (c v4Client) FramesPerWrite() float64 {
	st := c.Stats()
	if st.Writes == 0 {
		return 0
	}
	return float64(st.Frames) / float64(st.Writes)
}
