package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
)

// The end-to-end tests re-execute the test binary as the server children,
// as clusterbench re-executes itself: a child runs main before any test.
func init() {
	if len(os.Args) == 2 && os.Args[1] == "-"+serveFlag {
		main()
		os.Exit(0)
	}
}

// ants/v2, which v4 runs its methods on, starts its package-level default
// pool (two goroutines) when it is imported. IgnoreCurrent ignores exactly
// the goroutines alive when the tests start, which are those two.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreCurrent()) }

func TestParseFlags(t *testing.T) {
	var out bytes.Buffer
	cfg, err := parseFlags(nil, &out)
	require.NoError(t, err)
	require.Equal(t, []int{1, 2, 4}, cfg.servers)
	require.Equal(t, 4, cfg.failover)
	require.Equal(t, 64, cfg.callers)
	require.Equal(t, 64, cfg.size)
	require.Equal(t, time.Second, cfg.warmup)
	require.Equal(t, 5*time.Second, cfg.duration)
	require.Equal(t, 5*time.Second, cfg.deadline)
	require.InDelta(t, 0.4, cfg.killAt, 1e-9)
	require.Equal(t, "p2c", cfg.balancer)
	require.Len(t, scenarios(cfg), 5)

	cfg, err = parseFlags(strings.Fields("-servers 3,8 -failover 0 -callers 7 -size 4096 -warmup 0s -duration 2s -deadline 1s -kill-at 0.5 -balancer rr"), &out)
	require.NoError(t, err)
	require.Equal(t, []int{3, 8}, cfg.servers)
	require.Zero(t, cfg.failover)
	require.Equal(t, 7, cfg.callers)
	require.Equal(t, 4096, cfg.size)
	require.Zero(t, cfg.warmup)
	require.Equal(t, 2*time.Second, cfg.duration)
	require.Equal(t, time.Second, cfg.deadline)
	require.Equal(t, "rr", cfg.balancer)
	require.Equal(t, []scenario{{name: "steady", servers: 3}, {name: "steady", servers: 8}}, scenarios(cfg))

	cfg, err = parseFlags(strings.Fields("-servers= -failover 2"), &out) // the failover runs alone
	require.NoError(t, err)
	require.Equal(t, []scenario{
		{name: "failover", servers: 2, kill: true},
		{name: "failover-idempotent", servers: 2, kill: true, idempotent: true},
	}, scenarios(cfg))

	for args, want := range map[string]string{
		"-servers 0":            "-servers",
		"-servers 1,x":          "whole numbers from 1 to 64",
		"-servers 65":           "from 1 to",
		"-failover 1":           "-failover 1: want 0 (none) or 2 to 64",
		"-servers= -failover 0": "nothing to run",
		"-callers 0":            "-callers 0",
		"-size 4":               "at least 8 bytes",
		"-size 2000000":         "at most",
		"-warmup -1s":           "-warmup",
		"-duration 0s":          "positive duration",
		"-deadline 0s":          "-deadline",
		"-kill-at 1":            "fraction between 0 and 1",
		"-kill-at 0":            "fraction between 0 and 1",
		"-balancer random":      `-balancer "random": want p2c or rr`,
		"-callers 4 extra":      "unexpected arguments",
		"-duration 5":           "invalid value",
		"-nosuchflag":           "not defined",
	} {
		_, err := parseFlags(strings.Fields(args), &out)
		require.ErrorContains(t, err, want, args)
	}

	// The usage lists the flags, but not the children's.
	out.Reset()
	_, err = parseFlags([]string{"-h"}, &out)
	require.Error(t, err)
	require.Contains(t, out.String(), "-balancer")
	require.NotRegexp(t, `(?m)^  -`+serveFlag+`$`, out.String())
}

// classify is what the lost count rests on: a nil error counts as a
// success only with the request's own bytes as the reply.
func TestClassify(t *testing.T) {
	want := []byte("\x07\x00\x00\x00\x00\x01\x00\x00payload")
	stale := bytes.Clone(want)
	stale[0] = 6 // the same caller's previous call
	other := bytes.Clone(want)
	other[5] = 2 // another caller's call
	for _, c := range []struct {
		name  string
		err   error
		reply []byte
		want  outcome
	}{
		{"the echo", nil, bytes.Clone(want), okCall},
		{"no reply written", nil, nil, wrongReply},
		{"the previous call's reply", nil, stale, wrongReply},
		{"another caller's reply", nil, other, wrongReply},
		{"a reply cut short", nil, want[:len(want)-1], wrongReply},
		{"ErrConnLost", fmt.Errorf("cluster: call Echo.Echo: %w", epollbatch.ErrConnLost), nil, connLost},
		{"ErrConnLost, with the reply anyway", epollbatch.ErrConnLost, bytes.Clone(want), connLost},
		{"ErrNotSent", fmt.Errorf("wrapped: %w", epollbatch.ErrNotSent), nil, notSent},
		{"ErrNoEndpoints", fmt.Errorf("cluster: call Echo.Echo: %w (%w): 4 listed, none up", cluster.ErrNoEndpoints, epollbatch.ErrNotSent), nil, noEndpoints},
		{"a server's error", epollbatch.ServerError("no such method"), nil, otherErr},
		{"shutdown", epollbatch.ErrShutdown, nil, otherErr},
	} {
		require.Equal(t, c.want, classify(c.err, c.reply, want), c.name)
	}
}

// fakeClient echoes, except in the ways a broken cluster client could
// fail its callers without an error.
type fakeClient struct {
	broken  func(n int64) bool // whether the nth call (from 1) is broken
	how     string             // "no reply", "stale" or "hang"
	calls   atomic.Int64
	nBroken atomic.Int64
	release chan struct{} // closed by Close: hanging calls return
	once    sync.Once
	mu      sync.Mutex
	last    []byte // the last reply given, for "stale"
}

func newFakeClient(how string, broken func(int64) bool) *fakeClient {
	return &fakeClient{how: how, broken: broken, release: make(chan struct{})}
}

func (f *fakeClient) Call(_ context.Context, _ string, args, reply any) error {
	n := f.calls.Add(1)
	req, rp := args.([]byte), reply.(*[]byte)
	if f.broken != nil && f.broken(n) {
		f.nBroken.Add(1)
		switch f.how {
		case "no reply":
			return nil
		case "stale":
			f.mu.Lock()
			*rp = append((*rp)[:0], f.last...)
			f.mu.Unlock()
			return nil
		case "hang":
			<-f.release
			return epollbatch.ErrShutdown
		}
	}
	*rp = append((*rp)[:0], req...)
	f.mu.Lock()
	f.last = append(f.last[:0], req...)
	f.mu.Unlock()
	return nil
}

func (f *fakeClient) Close() error {
	f.once.Do(func() { close(f.release) })
	return nil
}

var shortLoad = load{callers: 8, size: 64, warmup: 20 * time.Millisecond, duration: 100 * time.Millisecond, deadline: 100 * time.Millisecond}

// A broken client is caught: every call that returned nil without its
// reply is counted as lost, exactly, and so is every call that never
// returned.
func TestDriveCountsLost(t *testing.T) {
	f := newFakeClient("", nil)
	tl := drive(context.Background(), f, f.Close, shortLoad)
	require.Zero(t, tl.lost())
	require.Zero(t, tl.failed())
	require.Equal(t, f.calls.Load(), tl.outcomes[okCall])
	require.NotEmpty(t, tl.samples)

	for _, how := range []string{"no reply", "stale"} {
		f := newFakeClient(how, func(n int64) bool { return n%97 == 0 })
		tl := drive(context.Background(), f, f.Close, shortLoad)
		require.Positive(t, f.nBroken.Load(), how)
		require.Equal(t, f.nBroken.Load(), tl.outcomes[wrongReply], how)
		require.Equal(t, f.nBroken.Load(), tl.lost(), how)
		require.Zero(t, tl.neverReturned, how)
		require.Equal(t, f.calls.Load(), tl.outcomes[okCall]+tl.outcomes[wrongReply], how)
	}

	// Calls that hang: the callers that made one are stuck in it at the
	// end, counted as never returned, and released by Close.
	f = newFakeClient("hang", func(n int64) bool { return n > 1000 })
	start := time.Now()
	tl = drive(context.Background(), f, f.Close, shortLoad)
	require.Less(t, time.Since(start), time.Second)
	require.Equal(t, f.nBroken.Load(), tl.neverReturned)
	require.EqualValues(t, shortLoad.callers, tl.neverReturned)
	require.EqualValues(t, shortLoad.callers, tl.lost())
	require.Zero(t, tl.outcomes[otherErr], "a call counted as never returned is not counted again when Close releases it")
	require.Zero(t, tl.abandoned)
	r := &result{sc: scenario{name: "steady", servers: 1}, t: tl, killed: -1}
	require.Contains(t, strings.Join(r.problems(), "\n"), "8 call(s) lost without an error (0 wrong replies, 8 never returned)")
}

// The event runs on time and its effect is polled for.
func TestDriveEvent(t *testing.T) {
	f := newFakeClient("", nil)
	var polls atomic.Int32
	l := shortLoad
	// Room for the timer to fire late and still poll three times: under
	// `go test -race ./...` on 2 cores it fired at 83 ms, not 40, and the
	// 100 ms window ended before the third poll.
	l.duration = 500 * time.Millisecond
	l.event = &event{
		at:  40 * time.Millisecond,
		do:  func() {},
		out: func() bool { return polls.Add(1) == 3 },
	}
	tl := drive(context.Background(), f, f.Close, l)
	require.GreaterOrEqual(t, tl.eventAt, 40*time.Millisecond)
	require.GreaterOrEqual(t, tl.outAt, tl.eventAt+3*pollEvery-time.Millisecond)
	require.EqualValues(t, 3, polls.Load())
}

func TestMovedAt(t *testing.T) {
	// 1,000 calls/s for 1 s, none from 400 to 500 ms, 500 calls/s to
	// 700 ms, then 1,000 calls/s again.
	var ss []sample
	for ms := range 1000 {
		d := time.Duration(ms) * time.Millisecond
		switch {
		case ms >= 400 && ms < 500:
		case ms >= 500 && ms < 700:
			if ms%2 == 0 {
				ss = append(ss, sample{end: d})
			}
		default:
			ss = append(ss, sample{end: d})
		}
	}
	require.Equal(t, 400, countBefore(ss, 400*time.Millisecond))
	require.Equal(t, 400, countBefore(ss, 450*time.Millisecond))
	require.Equal(t, 401, countBefore(ss, 501*time.Millisecond))
	require.Equal(t, len(ss), countBefore(ss, time.Hour))

	// From 410 ms, the first window with 90 calls or more: [620, 720)
	// has 40 + 20, [670, 770) 15 + 70, [680, 780) 10 + 80.
	at, ok := movedAt(ss, 410*time.Millisecond, time.Second, 1000)
	require.True(t, ok)
	require.Equal(t, 680*time.Millisecond, at)
	// Out of the balancer only later: the window starts no earlier.
	at, ok = movedAt(ss, 850*time.Millisecond, time.Second, 1000)
	require.True(t, ok)
	require.Equal(t, 850*time.Millisecond, at)
	// No full window left, or never fast enough.
	_, ok = movedAt(ss, 950*time.Millisecond, time.Second, 1000)
	require.False(t, ok)
	_, ok = movedAt(ss, 0, time.Second, 2000)
	require.False(t, ok)

	r := &result{sc: scenario{name: "failover", servers: 4, kill: true}, killed: 3, t: &tally{
		elapsed: time.Second, samples: ss, eventAt: 400 * time.Millisecond, outAt: 410 * time.Millisecond,
	}}
	r.summarize()
	require.EqualValues(t, len(ss), r.calls)
	require.InDelta(t, 1000, r.preRate, 1e-9)
	require.Equal(t, 10*time.Millisecond, r.out)
	require.Equal(t, 280*time.Millisecond, r.moved)
	require.InDelta(t, float64(len(ss)-countBefore(ss, 680*time.Millisecond))/0.32, r.postRate, 1e-9)
	require.Empty(t, r.problems())

	r.t.outAt = -1
	r.summarize()
	require.Contains(t, r.problems(), "the killed server's endpoint never left the balancer")
}

// The whole command, small: two servers steady, then four with one
// killed, plain and idempotent. Under -race, so the figures mean little;
// the counts are what is checked.
func TestBench(t *testing.T) {
	// Under -race a process sleeps a second as it exits (the race
	// runtime's atexit_sleep_ms); the server children need not.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	self, err := os.Executable()
	require.NoError(t, err)
	cfg, err := parseFlags(strings.Fields("-servers 2 -failover 4 -callers 16 -warmup 100ms -duration 400ms -deadline 2s"), &bytes.Buffer{})
	require.NoError(t, err)
	var out bytes.Buffer
	rs, _ := bench(context.Background(), self, cfg, &out)
	t.Log("\n" + out.String())
	require.Len(t, rs, 3)
	for _, r := range rs {
		require.NoError(t, r.err, r.sc.name)
		require.NotNil(t, r.t, r.sc.name)
		require.Zero(t, r.t.lost(), r.sc.name)
		require.Zero(t, r.t.abandoned, r.sc.name)
		require.Zero(t, r.t.outcomes[notSent], r.sc.name)
		require.Positive(t, r.calls, r.sc.name)
	}
	steady := rs[0]
	require.Zero(t, steady.t.failed())
	require.Len(t, steady.perServer, 2)
	for i, n := range steady.perServer {
		require.Positive(t, n, "server %d took no call", i)
	}
	for _, r := range rs[1:] {
		require.Len(t, r.perServer, 4)
		require.GreaterOrEqual(t, r.t.eventAt, time.Duration(0), r.sc.name)
		require.GreaterOrEqual(t, r.out, time.Duration(0), "%s: the killed endpoint never left the balancer", r.sc.name)
		require.Zero(t, r.t.outcomes[otherErr]+r.t.outcomes[noEndpoints], r.sc.name)
	}
	require.Zero(t, rs[2].t.failed(), "idempotent calls failed")

	s := out.String()
	require.Contains(t, s, "note: every server process and this client share the same")
	require.Regexp(t, `(?m)^ +run +servers +balancer +calls/s +p50 +p99 +failed +lost +resent +calls per server$`, s)
	require.Regexp(t, `(?m)^ +run +lost +failed +ErrConnLost +ErrNotSent +other +resent +out +moved +calls/s before +after$`, s)
	require.Regexp(t, `(?m)^BenchmarkCluster/run=steady/servers=2/balancer=p2c/callers=16/size=64 \d+ \d+ ns/op \d+ calls/s \d+ p50-ns \d+ p99-ns 0 failed 0 lost 0 resent$`, s)
	require.Regexp(t, `(?m)^BenchmarkCluster/run=failover-idempotent/servers=4/.* 0 failed 0 lost \d+ resent \d+ connlost 0 notsent 0 other-errors [\d.]+ out-ms -?[\d.]+ moved-ms$`, s)
}

// A run whose servers cannot start reports it, and runs nothing.
func TestBenchNoServer(t *testing.T) {
	cfg, err := parseFlags(strings.Fields("-servers 1 -failover 0"), &bytes.Buffer{})
	require.NoError(t, err)
	var out bytes.Buffer
	rs, ok := bench(context.Background(), "/nonexistent/clusterbench", cfg, &out)
	require.False(t, ok)
	require.Len(t, rs, 1)
	require.Nil(t, rs[0].t)
	require.True(t, errors.Is(rs[0].err, os.ErrNotExist), rs[0].err)
	require.Contains(t, out.String(), "FAIL: steady, 1 server(s): starting the server process")
}
