package epollbatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Every option at its boundaries: 1, the largest value it takes, 0 and a
// negative value, on the side it configures. Each case serves and calls
// as a user would: two calls one after the other on one connection,
// eight at once, and one whose frames are larger than the default input
// buffer. Nothing may hang; each call succeeds or fails with the error
// the option's documentation promises.

// outcome is what a case's calls may return.
type outcome int

const (
	allOK       outcome = iota // every call succeeds
	mayRefuse                  // a call may get a ServerError saying "refused" or "overloaded"
	mayDrop                    // a call may fail on a connection closed under it (then the next reconnects)
	frameTooBig                // every call fails: a frame over the limit
	dialFails                  // Dial fails at once
)

func TestOptionBoundaries(t *testing.T) {
	type tc struct {
		name   string
		server []ServerOption
		client []ClientOption
		want   outcome
	}
	cases := []tc{
		{name: "defaults"},
		// Both sides.
		{name: "server MaxFrameSize 1", server: []ServerOption{WithMaxFrameSize(1)}, want: frameTooBig},
		{name: "server MaxFrameSize 64MiB", server: []ServerOption{WithMaxFrameSize(64 << 20)}},
		{name: "server MaxFrameSize 0", server: []ServerOption{WithMaxFrameSize(0)}},
		{name: "server MaxFrameSize -1", server: []ServerOption{WithMaxFrameSize(-1)}},
		{name: "client MaxFrameSize 1", client: []ClientOption{WithMaxFrameSize(1)}, want: frameTooBig},
		{name: "client MaxFrameSize max", client: []ClientOption{WithMaxFrameSize(math.MaxInt)}},
		{name: "client MaxFrameSize 0", client: []ClientOption{WithMaxFrameSize(0)}},
		{name: "client MaxFrameSize -1", client: []ClientOption{WithMaxFrameSize(-1)}},
		{name: "server BufferSize 1", server: []ServerOption{WithBufferSize(1)}},
		{name: "server BufferSize max", server: []ServerOption{WithBufferSize(math.MaxInt)}}, // taken as the frame limit
		{name: "server BufferSize 0", server: []ServerOption{WithBufferSize(0)}},
		{name: "server BufferSize -1", server: []ServerOption{WithBufferSize(-1)}},
		{name: "client BufferSize 1", client: []ClientOption{WithBufferSize(1)}},
		{name: "client BufferSize max", client: []ClientOption{WithBufferSize(math.MaxInt)}},
		{name: "client BufferSize 0", client: []ClientOption{WithBufferSize(0)}},
		{name: "client BufferSize -1", client: []ClientOption{WithBufferSize(-1)}},
		{name: "server Reactors 1", server: []ServerOption{WithReactors(1)}},
		{name: "server Reactors 64", server: []ServerOption{WithReactors(64)}},
		{name: "server Reactors 0", server: []ServerOption{WithReactors(0)}},
		{name: "server Reactors -1", server: []ServerOption{WithReactors(-1)}},
		{name: "client Reactors 1", client: []ClientOption{WithReactors(1)}},
		{name: "client Reactors 64", client: []ClientOption{WithReactors(64)}},
		{name: "client Reactors 0", client: []ClientOption{WithReactors(0)}},
		{name: "client Reactors -1", client: []ClientOption{WithReactors(-1)}},
		{name: "server BusyPoll 1ns", server: []ServerOption{WithBusyPoll(1)}},
		{name: "server BusyPoll max", server: []ServerOption{WithBusyPoll(math.MaxInt64)}}, // taken as MaxBusyPoll
		{name: "server BusyPoll 0", server: []ServerOption{WithBusyPoll(0)}},
		{name: "server BusyPoll -1", server: []ServerOption{WithBusyPoll(-1)}},
		{name: "client BusyPoll 1ns", client: []ClientOption{WithBusyPoll(1)}},
		{name: "client BusyPoll max", client: []ClientOption{WithBusyPoll(math.MaxInt64)}},
		{name: "client BusyPoll 0", client: []ClientOption{WithBusyPoll(0)}},
		{name: "client BusyPoll -1, own reactors", client: []ClientOption{WithBusyPoll(-1), WithReactors(1)}},
		// Server only.
		{name: "IdleTimeout 1ns", server: []ServerOption{WithIdleTimeout(1)}, want: mayDrop},
		{name: "IdleTimeout max", server: []ServerOption{WithIdleTimeout(math.MaxInt64)}},
		{name: "IdleTimeout 0", server: []ServerOption{WithIdleTimeout(0)}},
		{name: "IdleTimeout -1", server: []ServerOption{WithIdleTimeout(-1)}},
		{name: "MaxInFlight 1", server: []ServerOption{WithMaxInFlight(1)}},
		{name: "MaxInFlight max", server: []ServerOption{WithMaxInFlight(math.MaxInt)}},
		{name: "MaxInFlight 0", server: []ServerOption{WithMaxInFlight(0)}},
		{name: "MaxInFlight -1", server: []ServerOption{WithMaxInFlight(-1)}},
		{name: "MaxBytesInFlight 1", server: []ServerOption{WithMaxBytesInFlight(1)}, want: mayRefuse},
		{name: "MaxBytesInFlight max", server: []ServerOption{WithMaxBytesInFlight(math.MaxInt)}},
		{name: "MaxBytesInFlight 0", server: []ServerOption{WithMaxBytesInFlight(0)}},
		{name: "MaxBytesInFlight -1", server: []ServerOption{WithMaxBytesInFlight(-1)}},
		{name: "Workers 1", server: []ServerOption{WithWorkers(1)}, want: mayRefuse},
		{name: "Workers max", server: []ServerOption{WithWorkers(math.MaxInt32)}},
		{name: "Workers 0", server: []ServerOption{WithWorkers(0)}},
		{name: "Workers -1", server: []ServerOption{WithWorkers(-1)}},
		// Client only.
		{name: "DialTimeout 1ns", client: []ClientOption{WithDialTimeout(1)}, want: dialFails},
		{name: "DialTimeout max", client: []ClientOption{WithDialTimeout(math.MaxInt64)}},
		{name: "DialTimeout 0", client: []ClientOption{WithDialTimeout(0)}},
		{name: "DialTimeout -1", client: []ClientOption{WithDialTimeout(-1)}},
		{name: "Conns 1", client: []ClientOption{WithConns(1)}},
		{name: "Conns max", client: []ClientOption{WithConns(math.MaxInt)}}, // taken as MaxConnsCap
		{name: "Conns 0", client: []ClientOption{WithConns(0)}},
		{name: "Conns -1", client: []ClientOption{WithConns(-1)}},
		{name: "PingInterval 1ns", client: []ClientOption{WithPingInterval(1)}}, // taken as MinPingInterval
		{name: "PingInterval max", client: []ClientOption{WithPingInterval(math.MaxInt64)}},
		{name: "PingInterval 0", client: []ClientOption{WithPingInterval(0)}},
		{name: "PingInterval -1", client: []ClientOption{WithPingInterval(-1)}},
		{name: "MaxQueuedBytes 1", client: []ClientOption{WithMaxQueuedBytes(1)}},
		{name: "MaxQueuedBytes max", client: []ClientOption{WithMaxQueuedBytes(math.MaxInt)}},
		{name: "MaxQueuedBytes 0", client: []ClientOption{WithMaxQueuedBytes(0)}},
		{name: "MaxQueuedBytes -1", client: []ClientOption{WithMaxQueuedBytes(-1)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(tc.server...)
			require.NoError(t, s.RegisterName("echo", echo{}))
			addr := serveForTest(t, s)
			c, err := Dial("tcp", addr, append([]ClientOption{WithCodec(codec.Raw)}, tc.client...)...)
			if tc.want == dialFails {
				require.Error(t, err)
				require.ErrorContains(t, err, "timeout")
				return
			}
			require.NoError(t, err)
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			call := func(body []byte) error {
				var got []byte
				err := c.Call(ctx, "echo.Echo", body, &got)
				if err == nil && !bytes.Equal(got, body) {
					return fmt.Errorf("reply of %d bytes for a request of %d", len(got), len(body))
				}
				return err
			}
			check := func(what string, err error) {
				t.Helper()
				require.NoError(t, ctx.Err(), "%s: a call hung", what)
				var se ServerError
				switch {
				case err == nil:
					require.NotEqual(t, frameTooBig, tc.want, "%s: a frame over the limit went through", what)
				case tc.want == frameTooBig:
					if len(tc.client) > 0 { // the client refuses the reply
						require.ErrorIs(t, err, protocol.ErrFrameTooLarge, what)
					} // the server refuses the request and closes: any error
				case tc.want == mayRefuse && errors.As(err, &se) &&
					(strings.Contains(string(se), "refused") || strings.Contains(string(se), "overloaded")):
				case tc.want == mayDrop && !errors.As(err, &se):
				default:
					t.Fatalf("%s: %v", what, err)
				}
			}
			for i := range 2 {
				check(fmt.Sprintf("call %d", i), call(fmt.Appendf(nil, "call %d", i)))
			}
			var wg sync.WaitGroup
			errs := make([]error, 8)
			for i := range errs {
				wg.Go(func() { errs[i] = call(fmt.Appendf(nil, "concurrent %d", i)) })
			}
			wg.Wait()
			for i, err := range errs {
				check(fmt.Sprintf("concurrent call %d", i), err)
			}
			large := bytes.Repeat([]byte("large "), (DefaultBufferSize*2)/6)
			check("a call larger than the buffer", call(large))
		})
	}
}

// The options' caps, read back from the options they make.
func TestOptionCaps(t *testing.T) {
	so := newServerOptions([]ServerOption{WithMaxInFlight(math.MaxInt), WithBufferSize(math.MaxInt), WithMaxFrameSize(1 << 20)})
	require.Equal(t, MaxInFlightCap, so.maxInFlight)
	require.Equal(t, 1<<20, so.bufSize)
	co := newClientOptions([]ClientOption{WithConns(math.MaxInt), WithPingInterval(time.Nanosecond)})
	require.Equal(t, MaxConnsCap, co.conns)
	require.Equal(t, MinPingInterval, co.pingInterval)
	co = newClientOptions([]ClientOption{WithPingInterval(-1)})
	require.LessOrEqual(t, co.pingInterval, time.Duration(0), "pings off")
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
