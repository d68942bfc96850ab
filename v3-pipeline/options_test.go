package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Every option at its boundaries (1, the largest value, 0 and negative),
// on a real server and client: calls one after another on one connection,
// a few at once, and one whose frames are larger than the read buffer.
// Each call must succeed, or fail with the error the option's
// documentation gives; none may hang.
func TestOptionBoundaries(t *testing.T) {
	const maxInt, maxDuration = math.MaxInt, time.Duration(math.MaxInt64)
	type fails func(t *testing.T, err error)
	connError := func(t *testing.T, err error) { // the server closed the connection
		require.Error(t, err)
		require.False(t, errors.As(err, new(ServerError)), "%v", err)
	}
	tooLarge := func(t *testing.T, err error) { require.ErrorIs(t, err, protocol.ErrFrameTooLarge) }
	maybeConnError := func(t *testing.T, err error) { // the call may win the race
		if err != nil {
			connError(t, err)
		}
	}
	cases := []struct {
		name      string
		server    []ServerOption
		client    []ClientOption
		big       int   // the largest call's argument and reply; default 64 KiB
		fails     fails // how the calls fail; nil if they succeed
		dialFails fails // how Dial fails; nil if it succeeds
		maxDials  int64 // the most connections made; default 1
	}{
		{name: "server MaxFrameSize 1", server: []ServerOption{WithMaxFrameSize(1)}, fails: connError, maxDials: 20},
		{name: "server MaxFrameSize 0", server: []ServerOption{WithMaxFrameSize(0)}},
		{name: "server MaxFrameSize -1", server: []ServerOption{WithMaxFrameSize(-1)}},
		{name: "client MaxFrameSize 1", client: []ClientOption{WithMaxFrameSize(1)}, fails: tooLarge, maxDials: 20},
		{name: "client MaxFrameSize 0", client: []ClientOption{WithMaxFrameSize(0)}},
		{name: "client MaxFrameSize -1", client: []ClientOption{WithMaxFrameSize(-1)}},
		{name: "MaxFrameSize 64 MiB", server: []ServerOption{WithMaxFrameSize(64 << 20)}, client: []ClientOption{WithMaxFrameSize(64 << 20)}, big: 20 << 20},
		{name: "MaxFrameSize max", server: []ServerOption{WithMaxFrameSize(maxInt)}, client: []ClientOption{WithMaxFrameSize(maxInt)}},

		{name: "BufferSize 1", server: []ServerOption{WithBufferSize(1)}, client: []ClientOption{WithBufferSize(1)}},
		{name: "BufferSize max", server: []ServerOption{WithBufferSize(maxInt)}, client: []ClientOption{WithBufferSize(maxInt)}},
		{name: "BufferSize max, MaxFrameSize max", server: []ServerOption{WithBufferSize(maxInt), WithMaxFrameSize(maxInt)}, client: []ClientOption{WithBufferSize(maxInt), WithMaxFrameSize(maxInt)}},
		{name: "BufferSize 0", server: []ServerOption{WithBufferSize(0)}, client: []ClientOption{WithBufferSize(0)}},
		{name: "BufferSize -1", server: []ServerOption{WithBufferSize(-1)}, client: []ClientOption{WithBufferSize(-1)}},

		{name: "IdleTimeout 1", server: []ServerOption{WithIdleTimeout(1)}, fails: maybeConnError, maxDials: 20},
		{name: "IdleTimeout max", server: []ServerOption{WithIdleTimeout(maxDuration)}},
		{name: "IdleTimeout 0", server: []ServerOption{WithIdleTimeout(0)}},
		{name: "IdleTimeout -1", server: []ServerOption{WithIdleTimeout(-1)}},

		{name: "MaxInFlight 1", server: []ServerOption{WithMaxInFlight(1)}},
		{name: "MaxInFlight max", server: []ServerOption{WithMaxInFlight(maxInt)}},
		{name: "MaxInFlight 0", server: []ServerOption{WithMaxInFlight(0)}},
		{name: "MaxInFlight -1", server: []ServerOption{WithMaxInFlight(-1)}},

		{name: "MaxBytesInFlight 1", server: []ServerOption{WithMaxBytesInFlight(1)}},
		{name: "MaxBytesInFlight max", server: []ServerOption{WithMaxBytesInFlight(maxInt)}},
		{name: "MaxBytesInFlight 0", server: []ServerOption{WithMaxBytesInFlight(0)}},
		{name: "MaxBytesInFlight -1", server: []ServerOption{WithMaxBytesInFlight(-1)}},

		{name: "DialTimeout 1", client: []ClientOption{WithDialTimeout(1)}, dialFails: func(t *testing.T, err error) {
			require.ErrorIs(t, err, context.DeadlineExceeded)
		}},
		{name: "DialTimeout max", client: []ClientOption{WithDialTimeout(maxDuration)}},
		{name: "DialTimeout 0", client: []ClientOption{WithDialTimeout(0)}},
		{name: "DialTimeout -1", client: []ClientOption{WithDialTimeout(-1)}},

		{name: "Conns 1", client: []ClientOption{WithConns(1)}},
		// Connections are made lazily: one by Dial, then one per call
		// until each has its own.
		{name: "Conns max", client: []ClientOption{WithConns(maxInt)}, maxDials: 1 + 7},
		{name: "Conns 0", client: []ClientOption{WithConns(0)}},
		{name: "Conns -1", client: []ClientOption{WithConns(-1)}},

		{name: "PingInterval 1", client: []ClientOption{WithPingInterval(1)}},
		{name: "PingInterval max", client: []ClientOption{WithPingInterval(maxDuration)}},
		{name: "PingInterval 0", client: []ClientOption{WithPingInterval(0)}},
		{name: "PingInterval -1", client: []ClientOption{WithPingInterval(-1)}},

		{name: "MaxQueuedBytes 1", client: []ClientOption{WithMaxQueuedBytes(1)}},
		{name: "MaxQueuedBytes max", client: []ClientOption{WithMaxQueuedBytes(maxInt)}},
		{name: "MaxQueuedBytes 0", client: []ClientOption{WithMaxQueuedBytes(0)}},
		{name: "MaxQueuedBytes -1", client: []ClientOption{WithMaxQueuedBytes(-1)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newEchoServer(t, tc.server...)
			addr := serve(t, s, nil)
			c, err := Dial("tcp", addr, append([]ClientOption{WithCodec(codec.Raw)}, tc.client...)...)
			if tc.dialFails != nil {
				require.Nil(t, c)
				tc.dialFails(t, err)
				return
			}
			require.NoError(t, err)
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			check := func(err error, reply, want []byte) {
				t.Helper()
				require.NotErrorIs(t, err, context.DeadlineExceeded, "the call hung")
				if tc.fails != nil {
					tc.fails(t, err)
				} else {
					require.NoError(t, err)
				}
				if err == nil {
					require.True(t, bytes.Equal(reply, want), "a reply of %d bytes, want %d", len(reply), len(want))
				}
			}

			// One after another, on one connection.
			for i := range 2 {
				want := fmt.Appendf(nil, "call %d", i)
				var reply []byte
				check(c.Call(ctx, "Echo.Echo", want, &reply), reply, want)
			}
			// A few at once, one of them with frames larger than the
			// read buffer.
			args := [][]byte{[]byte("a"), []byte("b"), []byte("c"), []byte("d"), bytes.Repeat([]byte("big"), 64<<10/3)}
			replies := make([][]byte, len(args))
			calls := make([]*Call, len(args))
			for i := range args {
				calls[i] = c.Go(ctx, "Echo.Echo", args[i], &replies[i], nil)
			}
			for i, call := range calls {
				<-call.Done
				check(call.Error, replies[i], args[i])
			}
			// A large call, alone.
			if tc.big > 0 {
				waitWritten(t, s)
				want := bytes.Repeat([]byte{7}, tc.big)
				var reply []byte
				check(c.Call(ctx, "Echo.Echo", want, &reply), reply, want)
			}
			maxDials := tc.maxDials
			if maxDials == 0 {
				maxDials = 1
			}
			require.LessOrEqual(t, c.Stats().Dials, maxDials)
		})
	}
}

// The bounds the options document.
func TestOptionCaps(t *testing.T) {
	o := newClientOptions([]ClientOption{WithConns(math.MaxInt), WithPingInterval(1), WithBufferSize(math.MaxInt)})
	require.Equal(t, MaxConnsCap, o.conns)
	require.Equal(t, MinPingInterval, o.pingInterval)
	require.Equal(t, protocol.DefaultMaxFrameSize, o.bufSize, "no larger than the frame limit")
	o = newClientOptions([]ClientOption{WithBufferSize(math.MaxInt), WithMaxFrameSize(math.MaxInt), WithPingInterval(-1)})
	require.Equal(t, MaxBufferSize, o.bufSize)
	require.Negative(t, o.pingInterval, "no pings")
	o = newClientOptions([]ClientOption{WithBufferSize(1 << 20), WithMaxFrameSize(1000)})
	require.Equal(t, 1000, o.bufSize)

	so := newServerOptions([]ServerOption{WithBufferSize(math.MaxInt), WithMaxFrameSize(64 << 10), WithMaxInFlight(math.MaxInt), WithMaxBytesInFlight(math.MaxInt)})
	require.Equal(t, 64<<10, so.bufSize)
	require.Equal(t, math.MaxInt, so.maxInFlight)
	require.Equal(t, math.MaxInt, so.maxBytesInFlight)
}

// One option value applied by many Dials at once is read, never written
// (run with -race: WithPingInterval once clamped its captured value as
// it applied itself).
func TestOptionSharedByConcurrentDials(t *testing.T) {
	opt := WithPingInterval(time.Nanosecond) // below the minimum: clamped
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			var o clientOptions
			opt.applyClient(&o)
			if o.pingInterval != MinPingInterval {
				t.Errorf("ping interval %v, want %v", o.pingInterval, MinPingInterval)
			}
		})
	}
	wg.Wait()
}
