package cluster

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// Every option at its boundaries: 0, 1, negative, huge, nil.
func TestOptionBounds(t *testing.T) {
	o := newOptions(nil)
	require.IsType(t, &roundRobin{}, o.balancer)
	require.NotNil(t, o.logger)
	require.Equal(t, DefaultResolveTimeout, o.resolveTimeout)
	require.Equal(t, DefaultBackoffMin, o.backoffMin)
	require.Equal(t, DefaultBackoffMax, o.backoffMax)
	require.Empty(t, o.clientOpts)

	o = newOptions([]Option{nil, WithBalancer(nil), WithLogger(nil)})
	require.IsType(t, &roundRobin{}, o.balancer, "nil keeps the default")
	require.NotNil(t, o.logger)
	o = newOptions([]Option{WithBalancer(P2C())})
	require.IsType(t, p2c{}, o.balancer)

	for _, tc := range []struct {
		d, want time.Duration
	}{
		{0, DefaultResolveTimeout},
		{-1, DefaultResolveTimeout},
		{math.MinInt64, DefaultResolveTimeout},
		{1, 1},
		{math.MaxInt64, math.MaxInt64},
	} {
		require.Equal(t, tc.want, newOptions([]Option{WithResolveTimeout(tc.d)}).resolveTimeout, "WithResolveTimeout(%d)", tc.d)
	}

	for _, tc := range []struct {
		min, max, wantMin, wantMax time.Duration
	}{
		{0, 0, DefaultBackoffMin, DefaultBackoffMax},
		{-1, -1, DefaultBackoffMin, DefaultBackoffMax},
		{1, 1, 1, 1},
		{1, 0, 1, DefaultBackoffMax},
		{0, 1, DefaultBackoffMin, DefaultBackoffMin}, // max below min: min
		{time.Second, time.Millisecond, time.Second, time.Second},
		{time.Hour, 0, time.Hour, time.Hour},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{1, math.MaxInt64, 1, math.MaxInt64},
	} {
		o := newOptions([]Option{WithBackoff(tc.min, tc.max)})
		require.Equal(t, tc.wantMin, o.backoffMin, "WithBackoff(%d, %d)", tc.min, tc.max)
		require.Equal(t, tc.wantMax, o.backoffMax, "WithBackoff(%d, %d)", tc.min, tc.max)
	}

	o = newOptions([]Option{
		WithClientOptions(),
		WithClientOptions(epollbatch.WithConns(2)),
		WithClientOptions(epollbatch.WithDialTimeout(time.Second), epollbatch.WithPingInterval(0)),
	})
	require.Len(t, o.clientOpts, 3, "they add up")
}

// The pauses double from min to max, each shortened by at most a fifth,
// and never overflow, whatever the bounds.
func TestBackoffPauses(t *testing.T) {
	for _, b := range [][2]time.Duration{
		{1, 1},
		{3, 5},
		{DefaultBackoffMin, DefaultBackoffMax},
		{time.Millisecond, time.Hour},
		{1, math.MaxInt64},
		{math.MaxInt64 / 3, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64},
	} {
		c := &Client{opts: newOptions([]Option{WithBackoff(b[0], b[1])})}
		ideal := b[0]
		for attempt := range 100 {
			for range 3 {
				d := c.backoff(attempt)
				require.LessOrEqual(t, d, ideal, "%v attempt %d", b, attempt)
				require.GreaterOrEqual(t, d, ideal-ideal/5, "%v attempt %d", b, attempt)
				require.Positive(t, d)
			}
			if ideal >= b[1]/2 {
				ideal = b[1]
			} else {
				ideal = min(2*ideal, b[1])
			}
		}
	}
}

// DNS's options at their boundaries.
func TestDNSOptionBounds(t *testing.T) {
	interval := func(opts ...DNSOption) time.Duration { return DNS("h:1", opts...).(*dnsResolver).interval }
	require.Equal(t, DefaultDNSInterval, interval())
	require.Equal(t, DefaultDNSInterval, interval(WithDNSInterval(0)))
	require.Equal(t, DefaultDNSInterval, interval(WithDNSInterval(-time.Second)))
	require.Equal(t, DefaultDNSInterval, interval(WithDNSInterval(math.MinInt64)))
	require.Equal(t, MinDNSInterval, interval(WithDNSInterval(1)))
	require.Equal(t, MinDNSInterval+1, interval(WithDNSInterval(MinDNSInterval+1)))
	require.Equal(t, time.Duration(math.MaxInt64), interval(WithDNSInterval(math.MaxInt64)))
	r := DNS("h:1", nil, WithDNSLookup(nil), WithDNSLogger(nil)).(*dnsResolver)
	require.NotNil(t, r.lookup, "nil keeps the default")
	require.NotNil(t, r.logger)
	r = DNS("h:65535").(*dnsResolver)
	require.NoError(t, r.err)
	require.EqualValues(t, 65535, r.port)
	require.Error(t, DNS("h:65536").(*dnsResolver).err)
	require.Error(t, DNS("h:-1").(*dnsResolver).err)
}
