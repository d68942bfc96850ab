package benchcmp

import (
	"net"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	pipeline "github.com/rpcsteps/rpcsteps/v3-pipeline"
)

func v3Impl() Impl {
	return Impl{
		Name: "v3",
		Serve: func(ln net.Listener) (func(), error) {
			s := pipeline.NewServer()
			return serveVersion(ln, s.Register, s.Serve, s.Close)
		},
		Dial: func(addr string) (Client, error) {
			c, err := pipeline.Dial("tcp", addr, pipeline.WithCodec(codec.Raw))
			if err != nil {
				return nil, err
			}
			return v3Client{c}, nil
		},
	}
}

// v3Client reports how many requests its writer sent per write.
type v3Client struct{ *pipeline.Client }

func (c v3Client) FramesPerWrite() float64 {
	st := c.Stats()
	if st.Flushes == 0 {
		return 0
	}
	return float64(st.Frames) / float64(st.Flushes)
}
