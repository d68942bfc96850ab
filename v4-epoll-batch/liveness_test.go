package epollbatch

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// A large reply that arrives slowly is a sign of life: the connection is
// not declared dead because no whole frame came for three ping intervals
// (512 KiB in 32 pieces, one every 10 ms, against pings every 50 ms).
func TestSlowLargeReplyIsNotSilence(t *testing.T) {
	const size, chunk = 512 << 10, 16 << 10
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { // a server that takes its time to send a reply
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		var req protocol.Frame
		if _, err := protocol.ReadFrame(bufio.NewReader(conn), 0, &req, nil); err != nil {
			return
		}
		reply, _ := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeReply, Codec: codec.Raw.ID(), Seq: req.Seq}, "", "", make([]byte, size))
		for len(reply) > 0 {
			n := min(chunk, len(reply))
			if _, err := conn.Write(reply[:n]); err != nil {
				return
			}
			reply = reply[n:]
			time.Sleep(10 * time.Millisecond)
		}
		io.Copy(io.Discard, conn) // the pings, until the client closes
	})
	c, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw), WithPingInterval(50*time.Millisecond))
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var reply []byte
	require.NoError(t, c.Call(ctx, "echo.Echo", []byte("x"), &reply))
	require.Len(t, reply, size)
	c.Close()
}
