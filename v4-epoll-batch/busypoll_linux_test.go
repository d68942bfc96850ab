package epollbatch

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
)

// WithBusyPoll's values, as each side takes them: off at 0 and below,
// capped at MaxBusyPoll, DefaultBusyPoll without the option.
func TestBusyPollValues(t *testing.T) {
	for _, c := range []struct {
		opt  []Option
		want time.Duration
	}{
		{nil, DefaultBusyPoll},
		{[]Option{WithBusyPoll(1)}, 1},
		{[]Option{WithBusyPoll(time.Millisecond)}, time.Millisecond},
		{[]Option{WithBusyPoll(MaxBusyPoll)}, MaxBusyPoll},
		{[]Option{WithBusyPoll(math.MaxInt64)}, MaxBusyPoll},
		{[]Option{WithBusyPoll(0)}, 0},
		{[]Option{WithBusyPoll(-1)}, 0},
		{[]Option{WithBusyPoll(math.MinInt64)}, 0},
	} {
		var so []ServerOption
		var co []ClientOption
		for _, o := range c.opt {
			so, co = append(so, o), append(co, o)
		}
		require.Equal(t, c.want, newServerOptions(so).busyPoll)
		require.Equal(t, c.want, newClientOptions(co).busyPoll)
	}
}

// A loop polls without blocking while the last round found work and for
// its busy poll after the last work, then blocks; at 0 it blocks as soon
// as a round finds nothing.
func TestLoopPolling(t *testing.T) {
	l := &loop{}
	l.busyPoll.Store(int64(50 * time.Microsecond))
	require.True(t, l.polling(true, time.Hour), "work in the last round")
	require.True(t, l.polling(false, 0))
	require.True(t, l.polling(false, 49*time.Microsecond))
	require.False(t, l.polling(false, 50*time.Microsecond))
	require.False(t, l.polling(false, time.Hour))
	l.busyPoll.Store(0)
	require.True(t, l.polling(true, 0))
	require.False(t, l.polling(false, 0), "off: block at once")
}

// The server's reactors take the server's busy poll; a client's own
// reactors its own; the shared ones the longest of the clients using
// them, again when one of them closes.
func TestBusyPollReachesTheLoops(t *testing.T) {
	if portableDefault {
		t.Skip("the portable engine (-tags rpcsteps_portable) has no reactor to poll")
	}
	s := NewServer(WithBusyPoll(3 * time.Millisecond))
	require.NoError(t, s.RegisterName("echo", echo{}))
	addr := serveForTest(t, s)
	call := func(c *Client) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var reply []byte
		require.NoError(t, c.Call(ctx, "echo.Echo", []byte("x"), &reply))
	}
	own, err := Dial("tcp", addr, WithCodec(codec.Raw), WithReactors(1), WithBusyPoll(2*time.Millisecond))
	require.NoError(t, err)
	defer own.Close()
	call(own)

	s.mu.Lock()
	loops := s.reactor.loops // started by the first connection
	s.mu.Unlock()
	require.NotEmpty(t, loops)
	for _, l := range loops {
		require.Equal(t, int64(3*time.Millisecond), l.busyPoll.Load())
	}
	ownLoops, _, err := own.reactorLoops()
	require.NoError(t, err)
	require.Len(t, ownLoops, 1)
	require.Equal(t, int64(2*time.Millisecond), ownLoops[0].busyPoll.Load())

	short, err := Dial("tcp", addr, WithCodec(codec.Raw), WithBusyPoll(0))
	require.NoError(t, err)
	defer short.Close()
	call(short)
	sharedLoops, isShared, err := short.reactorLoops()
	require.NoError(t, err)
	require.True(t, isShared)
	busy := func() (ds []time.Duration) {
		for _, l := range sharedLoops {
			ds = append(ds, time.Duration(l.busyPoll.Load()))
		}
		return ds
	}
	for _, d := range busy() {
		require.Zero(t, d, "one client, off")
	}
	long, err := Dial("tcp", addr, WithCodec(codec.Raw), WithBusyPoll(time.Millisecond))
	require.NoError(t, err)
	call(long)
	for _, d := range busy() {
		require.Equal(t, time.Millisecond, d, "the longest of the two")
	}
	require.NoError(t, long.Close())
	for _, d := range busy() {
		require.Zero(t, d, "the longer one closed")
	}
	call(short)
}
