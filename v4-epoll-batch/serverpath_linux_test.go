package epollbatch

import (
	"fmt"
	"testing"

	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// BenchmarkServerPath measures the server's own work per request: a
// reactor's read, parse and hand-off, the worker's call, the reply's way
// back through the ring and writev. The peer is no RPC client: one
// goroutine writes ready-made requests 64 at a time, another counts the
// replies by their lengths, so nearly all the CPU the benchmark takes is
// the server's. ns/op is the wall time per request on the machine's Ps,
// both sides included; compare it between commits with benchstat, not
// with the cross-process figures.
func BenchmarkServerPath(b *testing.B) {
	for _, size := range []int{64, 4096} {
		for _, window := range []int{64, 1024} {
			b.Run(fmt.Sprintf("size=%d/inflight=%d", size, window), func(b *testing.B) {
				benchServerPath(b, size, window)
			})
		}
	}
}

func benchServerPath(b *testing.B, size, window int) {
	if portableDefault {
		b.Skip("measures the epoll reactor")
	}
	s := NewServer()
	if err := s.RegisterName("echo", echo{}); err != nil {
		b.Fatal(err)
	}
	serveForTest(b, s)
	fds := socketpair(b)
	adoptForTest(s, fds[0])
	nc := fileConn(b, fds[1])

	const chunk = 64 // requests per write
	window = max(window, chunk) / chunk * chunk
	var reqs []byte
	body := make([]byte, size)
	for i := range chunk {
		reqs = append(reqs, request(uint64(i+1), "echo.Echo", body)...)
	}
	chunks := (b.N + chunk - 1) / chunk
	tokens := make(chan struct{}, window/chunk)
	for range window / chunk {
		tokens <- struct{}{}
	}
	wrote := make(chan error, 1)
	go func() {
		for range chunks {
			<-tokens
			if _, err := nc.Write(reqs); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()

	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	buf := make([]byte, 256<<10)
	have, replies := 0, 0
	for replies < chunks*chunk {
		n, err := nc.Read(buf[have:])
		if err != nil {
			b.Fatal(err)
		}
		have += n
		off := 0
		for {
			l, err := protocol.FrameLen(buf[off:have], protocol.DefaultMaxFrameSize)
			if err != nil {
				b.Fatal(err)
			}
			if l == 0 || off+l > have {
				break
			}
			off += l
			if replies++; replies%chunk == 0 {
				tokens <- struct{}{}
			}
		}
		have = copy(buf, buf[off:have])
	}
	b.StopTimer()
	if err := <-wrote; err != nil {
		b.Fatal(err)
	}
}
