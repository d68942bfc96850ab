package contracttest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// A reply larger than the client's limit: ErrFrameTooLarge; later calls work.
func testClientMaxFrameSize(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{MaxFrameSize: 4096})
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var got []byte
	err := c.Call(ctx, "Echo.Make", 64<<10, &got)
	require.ErrorIs(t, err, protocol.ErrFrameTooLarge)
	require.Nil(t, got)

	require.NoError(t, c.Call(ctx, "Echo.Make", 1000, &got), "a reply within the limit, later")
	require.Len(t, got, 1000)
}

// A request larger than the server's limit: an error, never a hang; the
// server serves others, and this client's later calls.
func testServerMaxFrameSize(t *testing.T, v Version) {
	e := start(t, v, Options{MaxFrameSize: 4096})
	c := e.dial(Options{Codec: codec.Raw})
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var got []byte
	err := c.Call(ctx, "Echo.Echo", make([]byte, 64<<10), &got)
	require.Error(t, err)
	require.NotErrorIs(t, err, context.DeadlineExceeded, "the call hung until its deadline")
	require.Nil(t, got)

	add(t, e.dial(Options{}), 1, 2)
	require.NoError(t, c.Call(ctx, "Echo.Echo", []byte("small"), &got))
	require.Equal(t, "small", string(got))
}

// validRequest is a request for Arith.Add(1, 2) in Gob.
func validRequest(t *testing.T) []byte {
	t.Helper()
	req, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Gob, "Arith.Add", Args{1, 2})
	require.NoError(t, err)
	return req
}

// Bad bytes on a connection: the server closes it and serves on.
func testBadInput(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	valid := validRequest(t)
	with := func(i int, b byte) []byte {
		w := bytes.Clone(valid)
		w[i] = b
		return w
	}
	announcing := func(body uint32) []byte {
		h := bytes.Clone(valid[:protocol.HeaderSize])
		binary.BigEndian.PutUint32(h[24:], body)
		return h
	}
	cases := []struct {
		name      string
		bytes     []byte
		halfClose bool // then close the writing side: no more bytes come
	}{
		{"garbage", bytes.Repeat([]byte("GET / HTTP/1.1\r\n"), 4), false},
		{"bad magic", with(0, 'X'), false},
		{"version 0", with(2, 0), false},
		{"version 2", with(2, 2), false},
		{"type 0", with(3, 0), false},
		{"type 9", with(3, 9), false},
		{"over the default limit", announcing(protocol.DefaultMaxFrameSize), false},
		{"4 GiB", announcing(math.MaxUint32), false},
		{"truncated header", valid[:protocol.HeaderSize/2], true},
		{"truncated sections", valid[:len(valid)-2], true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := e.raw()
			_, err := conn.Write(tc.bytes)
			require.NoError(t, err)
			if tc.halfClose {
				require.NoError(t, conn.CloseWrite())
			}
			expectClosed(t, conn, tc.name)
			add(t, c, 1, 2)
		})
	}
}

// A request in an unknown codec: a ServerError reply.
func testUnknownCodec(t *testing.T, v Version) {
	e := start(t, v, Options{})
	req := validRequest(t)
	req[4] = 200
	conn := e.raw()
	_, err := conn.Write(req)
	require.NoError(t, err)
	f := readFrame(t, conn, bufio.NewReader(conn))
	require.Equal(t, protocol.TypeReply, f.Type)
	require.Equal(t, uint64(1), f.Seq)
	require.NotZero(t, f.Flags&protocol.FlagError)
	require.NotEmpty(t, f.Error)
	add(t, e.dial(Options{}), 1, 2)
}

// A client that sends a request and half-closes still gets its reply; then
// the server closes.
func testHalfClose(t *testing.T, v Version) {
	e := start(t, v, Options{})
	conn := e.raw()
	req, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 42, codec.Gob, "Arith.Add", Args{40, 2})
	require.NoError(t, err)
	_, err = conn.Write(req)
	require.NoError(t, err)
	require.NoError(t, conn.CloseWrite())

	br := bufio.NewReader(conn)
	f := readFrame(t, conn, br)
	require.Equal(t, protocol.TypeReply, f.Type)
	require.Equal(t, uint64(42), f.Seq)
	var n int
	require.NoError(t, service.DecodeReply(f, &n))
	require.Equal(t, 42, n)

	var next protocol.Frame
	_, err = protocol.ReadFrame(br, 0, &next, nil)
	require.Error(t, err, "a frame after the reply")
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatal("the server did not close the half-closed connection")
	}
}

// Clients that vanish inside a frame leak nothing: once the server is
// closed, no goroutine started since the test began is left.
func testVanishMidFrame(t *testing.T, v Version) {
	before := goleak.IgnoreCurrent()
	e := start(t, v, Options{})
	valid := validRequest(t)
	for _, cut := range []int{protocol.HeaderSize / 2, protocol.HeaderSize, len(valid) - 1} {
		conn := e.raw()
		_, err := conn.Write(valid[:cut])
		require.NoError(t, err)
		conn.Close()
	}
	// One that announces 1 MiB, sends a little and vanishes.
	big, err := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeRequest, Codec: codec.RawID, Seq: 1}, "Echo.Echo", "", make([]byte, 1<<20))
	require.NoError(t, err)
	conn := e.raw()
	_, err = conn.Write(big[:64<<10])
	require.NoError(t, err)
	conn.Close()

	c, err := v.Dial("tcp", e.addr, Options{})
	require.NoError(t, err)
	add(t, c, 1, 2)
	_ = c.Close()
	_ = e.srv.Close()
	require.ErrorIs(t, e.served(), v.ErrServerClosed)
	require.NoError(t, goleak.Find(before))
}

// A client that writes requests and never reads the replies: the server's
// memory for it stays bounded, by back-pressure (the writes block) or by
// closing the connection (they fail).
func testNeverReads(t *testing.T, v Version) {
	const (
		body     = 64 << 10
		total    = 64 << 20
		maxGrow  = 16 << 20
		deadline = 1500 * time.Millisecond
	)
	e := start(t, v, Options{})
	conn := e.raw()
	req, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Raw, "Echo.Echo", make([]byte, body))
	require.NoError(t, err)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	require.NoError(t, conn.SetWriteDeadline(time.Now().Add(deadline)))
	written := 0
	for seq := uint64(1); written < total; seq++ {
		binary.BigEndian.PutUint64(req[8:], seq)
		n, err := conn.Write(req)
		written += n
		if err != nil {
			t.Logf("writing stopped after %d MiB: %v", written>>20, err)
			break
		}
	}
	time.Sleep(quiet) // let the server take in what it will
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("wrote %d MiB of requests; heap in use grew by %d KiB", written>>20, grew>>10)
	require.Less(t, grew, int64(maxGrow), "the server buffers what a client does not read")

	add(t, e.dial(Options{}), 1, 2)
}

// A ping frame is answered with a pong carrying its sequence ID: the
// liveness probe of long connections (v3 on), answered by every version.
func testPing(t *testing.T, v Version) {
	e := start(t, v, Options{})
	conn := e.raw()
	ping, err := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypePing, Seq: 9}, "", "", nil)
	require.NoError(t, err)
	_, err = conn.Write(ping)
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(guard)))
	var f protocol.Frame
	_, err = protocol.ReadFrame(bufio.NewReader(conn), 0, &f, nil)
	require.NoError(t, err)
	require.Equal(t, protocol.TypePong, f.Type)
	require.Equal(t, uint64(9), f.Seq)
}

// A connection that brings no request within the server's idle timeout is
// closed by the server, whether it never sent one or has gone quiet after
// a call (where the version keeps connections at all).
func testIdleTimeout(t *testing.T, v Version) {
	e := start(t, v, Options{IdleTimeout: 50 * time.Millisecond})
	for _, calls := range []int{0, 1} {
		conn := e.raw()
		br := bufio.NewReader(conn)
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(guard)))
		for range calls {
			_, err := conn.Write(validRequest(t))
			require.NoError(t, err)
			var f protocol.Frame
			_, err = protocol.ReadFrame(br, 0, &f, nil)
			require.NoError(t, err)
		}
		start := time.Now()
		_, err := br.ReadByte()
		require.Error(t, err)
		ne, ok := errors.AsType[net.Error](err)
		require.False(t, ok && ne.Timeout(), "closed by the server, not by our deadline: %v", err)
		require.Less(t, time.Since(start), guard)
	}
	add(t, e.dial(Options{}), 1, 2)
}
