package contracttest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// Calls with each codec, to methods taking a value, a pointer or a ctx
// first, replying a number, a struct or bytes.
func testCodecs(t *testing.T, v Version) {
	e := start(t, v, Options{})
	ctx := context.Background()
	for _, c := range []codec.Codec{nil, codec.Gob, codec.JSON} {
		name := "default"
		if c != nil {
			name = c.Name()
		}
		t.Run(name, func(t *testing.T) {
			cl := e.dial(Options{Codec: c})
			var n int
			require.NoError(t, cl.Call(ctx, "Arith.Add", Args{7, 8}, &n))
			require.Equal(t, 15, n)
			require.NoError(t, cl.Call(ctx, "Arith.Mul", &Args{7, 8}, &n))
			require.Equal(t, 56, n)
			require.NoError(t, cl.Call(ctx, "Arith.AddCtx", Args{-3, 1}, &n))
			require.Equal(t, -2, n)
			var q Quotient
			require.NoError(t, cl.Call(ctx, "Arith.Div", Args{17, 5}, &q))
			require.Equal(t, Quotient{3, 2}, q)
			var b []byte
			require.NoError(t, cl.Call(ctx, "Echo.Echo", []byte("bytes\x00\xff"), &b))
			require.Equal(t, []byte("bytes\x00\xff"), b)
		})
	}
	t.Run("raw", func(t *testing.T) {
		cl := e.dial(Options{Codec: codec.Raw})
		in := []byte("raw \x00\x01\xfe\xff bytes")
		var out []byte
		require.NoError(t, cl.Call(ctx, "Echo.Echo", in, &out))
		require.Equal(t, in, out)
		out = nil
		require.NoError(t, cl.Call(ctx, "Echo.Echo", &in, &out), "a *[]byte argument")
		require.Equal(t, in, out)
		big := make([]byte, 1<<20)
		for i := range big {
			big[i] = byte(i * 7)
		}
		require.NoError(t, cl.Call(ctx, "Echo.Echo", big, &out))
		require.Equal(t, big, out)
	})
}

// serveFrames is a fake server's connection handler answering requests with
// reg, one at a time, after sending each request's header on seen.
func serveFrames(reg *service.Registry, seen chan protocol.Header) func(net.Conn) {
	return func(conn net.Conn) {
		br := bufio.NewReader(conn)
		var buf, out []byte
		var f protocol.Frame
		for {
			var err error
			if buf, err = protocol.ReadFrame(br, 0, &f, buf); err != nil {
				return
			}
			switch f.Type {
			case protocol.TypePing:
				out, _ = protocol.AppendFrame(out[:0], &protocol.Header{Type: protocol.TypePong, Seq: f.Seq}, "", "", nil)
			case protocol.TypeRequest, protocol.TypeOneway:
				signal(seen, f.Header)
				out = reg.Handle(context.Background(), &f, out[:0])
			default:
				continue
			}
			if _, err := conn.Write(out); err != nil {
				return
			}
		}
	}
}

// What a client puts on the wire: the frame type, Gob by default, the
// codec it was given, and the time budget of its ctx.
func testWireRequest(t *testing.T, v Version) {
	reg := service.NewRegistry(nil)
	require.NoError(t, reg.Register(&Arith{}))
	require.NoError(t, reg.Register(&Recorder{Got: make(chan string, 8)}))
	seen := make(chan protocol.Header, 16)
	f := startFake(t, serveFrames(reg, seen))

	c := dial(t, v, f.addr, Options{})
	add(t, c, 1, 2) // with a deadline (see add)
	h := recv(t, seen, "the request")
	require.Equal(t, protocol.TypeRequest, h.Type)
	require.Equal(t, codec.GobID, h.Codec, "the default codec is Gob")
	require.NotZero(t, h.Flags&protocol.FlagDeadline)
	require.LessOrEqual(t, h.Budget, guard)
	require.Greater(t, h.Budget, guard/2)

	var n int
	require.NoError(t, c.Call(context.Background(), "Arith.Add", Args{1, 2}, &n))
	h = recv(t, seen, "the request without deadline")
	require.Zero(t, h.Flags&protocol.FlagDeadline, "a caller without deadline sends none")
	require.Zero(t, h.Budget)

	require.NoError(t, c.Notify(context.Background(), "Recorder.Record", "x"))
	h = recv(t, seen, "the notification")
	require.Equal(t, protocol.TypeOneway, h.Type)

	j := dial(t, v, f.addr, Options{Codec: codec.JSON})
	require.NoError(t, j.Call(context.Background(), "Arith.Add", Args{1, 2}, &n))
	h = recv(t, seen, "the JSON request")
	require.Equal(t, codec.JSONID, h.Codec)
}

// rawCall writes one request on a raw connection and reads its reply.
func rawCall(t *testing.T, conn net.Conn, br *bufio.Reader, typ protocol.Type, seq uint64, c codec.Codec, method string, args any) *protocol.Frame {
	t.Helper()
	req, err := service.AppendRequest(context.Background(), nil, typ, seq, c, method, args)
	require.NoError(t, err)
	_, err = conn.Write(req)
	require.NoError(t, err)
	return readFrame(t, conn, br)
}

// readFrame reads a frame from conn, within guard.
func readFrame(t *testing.T, conn net.Conn, br *bufio.Reader) *protocol.Frame {
	t.Helper()
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(guard)))
	var f protocol.Frame
	_, err := protocol.ReadFrame(br, 0, &f, nil)
	require.NoError(t, err, "reading a reply")
	return &f
}

// The server answers in the codec of the request, with its sequence ID.
func testReplyCodecFollowsRequest(t *testing.T, v Version) {
	e := start(t, v, Options{})
	for i, c := range []codec.Codec{codec.Gob, codec.JSON, codec.Raw} {
		t.Run(c.Name(), func(t *testing.T) {
			conn := e.raw() // v1 may close after one reply: one connection each
			seq := uint64(1000 + i)
			var f *protocol.Frame
			if c == codec.Raw {
				f = rawCall(t, conn, bufio.NewReader(conn), protocol.TypeRequest, seq, c, "Echo.Echo", []byte("raw"))
			} else {
				f = rawCall(t, conn, bufio.NewReader(conn), protocol.TypeRequest, seq, c, "Arith.Add", Args{2, 3})
			}
			require.Equal(t, protocol.TypeReply, f.Type)
			require.Equal(t, seq, f.Seq)
			require.Equal(t, c.ID(), f.Codec)
			require.Zero(t, f.Flags&protocol.FlagError, "error: %s", f.Error)
			if c == codec.Raw {
				require.Equal(t, "raw", string(f.Body))
			} else {
				var n int
				require.NoError(t, service.DecodeReply(f, &n))
				require.Equal(t, 5, n)
			}
		})
	}
}

// Register's rules and errors, while the server serves; dotted names are
// split at the last dot.
func testRegister(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	ctx := context.Background()
	add(t, c, 1, 1)

	require.Error(t, e.srv.Register(&Arith{}), "the name is taken")
	require.Error(t, e.srv.Register(&NoMethods{}), "no methods")
	require.Error(t, e.srv.Register(BadMethods{}), "no suitable method")
	require.Error(t, e.srv.Register(&hidden{}), "an unexported type needs RegisterName")

	require.NoError(t, e.srv.RegisterName("Hidden", &hidden{}))
	var n int
	require.NoError(t, c.Call(ctx, "Hidden.Twice", 21, &n))
	require.Equal(t, 42, n)

	require.NoError(t, e.srv.RegisterName("pkg.v2.Arith", &Arith{}))
	require.Error(t, e.srv.RegisterName("pkg.v2.Arith", &Arith{}), "the name is taken")
	require.NoError(t, c.Call(ctx, "pkg.v2.Arith.Add", Args{40, 2}, &n))
	require.Equal(t, 42, n)
	err := c.Call(ctx, "pkg.v2.Arith.Nope", Args{}, &n)
	require.True(t, v.IsServerError(err), "unknown method of a dotted service: %v", err)

	require.Empty(t, e.logs.String(), "Register returns its errors, it does not log them")
}

// Services registered while calls are served can be called.
func testRegisterWhileServing(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	const n = 20
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range n {
			assert.NoError(t, e.srv.RegisterName(fmt.Sprintf("Live%d", i), &Arith{}))
		}
	}()
	go func() {
		defer wg.Done()
		for i := range n {
			var sum int
			if assert.NoError(t, c.Call(context.Background(), "Arith.Add", Args{i, i}, &sum)) {
				assert.Equal(t, 2*i, sum)
			}
		}
	}()
	wg.Wait()
	for i := range n {
		var sum int
		require.NoError(t, c.Call(context.Background(), fmt.Sprintf("Live%d.Add", i), Args{i, 1}, &sum))
		require.Equal(t, i+1, sum)
	}
}

// A ctx-first method's ctx has the caller's deadline, or none.
func testCtxDeadline(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})

	var d DeadlineInfo
	require.NoError(t, c.Call(context.Background(), "Blocker.Deadline", 0, &d))
	require.False(t, d.Has, "a caller without deadline gives a ctx without one")

	for _, timeout := range []time.Duration{guard, time.Hour} {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		d = DeadlineInfo{}
		err := c.Call(ctx, "Blocker.Deadline", 0, &d)
		cancel()
		require.NoError(t, err)
		require.True(t, d.Has, "the caller's deadline of %v", timeout)
		require.LessOrEqual(t, d.Left, timeout, "the method has no more time than its caller")
		require.Greater(t, d.Left, timeout-2*time.Second, "the method has about the caller's time")
	}
}

// The method's ctx ends when the caller's deadline passes.
func testMethodCtxEndsWithCallerDeadline(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var reply string
	err := recv(t, callAsync(ctx, c, "Blocker.Wait", "d", &reply), "the call")
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Error(t, recv(t, e.svc.blocker.CtxErr, "the end of the method's ctx"))
	require.Empty(t, reply)
}

// The same on the wire alone, with no client to close the connection: the
// budget starts the method's timer, which ends it with DeadlineExceeded,
// returned as the reply's error.
func testMethodCtxDeadlineOnTheWire(t *testing.T, v Version) {
	e := start(t, v, Options{})
	conn := e.raw()
	const budget = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	req, err := service.AppendRequest(ctx, nil, protocol.TypeRequest, 9, codec.Gob, "Blocker.Wait", "wire")
	require.NoError(t, err)
	sent := time.Now()
	_, err = conn.Write(req)
	require.NoError(t, err)

	require.ErrorIs(t, recv(t, e.svc.blocker.CtxErr, "the end of the method's ctx"), context.DeadlineExceeded)
	require.GreaterOrEqual(t, time.Since(sent), budget-50*time.Millisecond, "the method's ctx ended before the budget")
	f := readFrame(t, conn, bufio.NewReader(conn))
	require.Equal(t, uint64(9), f.Seq)
	require.NotZero(t, f.Flags&protocol.FlagError)
	require.Equal(t, context.DeadlineExceeded.Error(), string(f.Error))
}

// serverErrorText is the text of the ServerError in err.
func serverErrorText(err error) string {
	if se, ok := errors.AsType[service.ServerError](err); ok {
		return string(se)
	}
	return err.Error()
}

// A method's error, an unknown service or method, arguments that do not
// decode: ServerErrors, after which the client still works.
func testServerErrors(t *testing.T, v Version) {
	e := start(t, v, Options{})
	cases := []struct {
		name, method string
		args         any
		text         string // exact, when given
	}{
		{"method error", "Arith.Div", Args{1, 0}, "divide by zero"},
		{"method error text", "Arith.Fail", "custom failure: ünïcode \x01 text", "custom failure: ünïcode \x01 text"},
		{"unknown service", "Nope.Add", Args{1, 2}, ""},
		{"unknown method", "Arith.Nope", Args{1, 2}, ""},
		{"no dot", "ArithAdd", Args{1, 2}, ""},
		{"undecodable args", "Arith.Add", "not Args", ""},
	}
	for _, cd := range []codec.Codec{codec.Gob, codec.JSON} {
		t.Run(cd.Name(), func(t *testing.T) {
			c := e.dial(Options{Codec: cd})
			for _, tc := range cases {
				n := -1
				err := c.Call(context.Background(), tc.method, tc.args, &n)
				require.Error(t, err, tc.name)
				require.True(t, v.IsServerError(err), "%s: %v (%T) is not a ServerError", tc.name, err, err)
				require.NotErrorIs(t, err, v.ErrShutdown, tc.name)
				if tc.text != "" {
					require.Equal(t, tc.text, serverErrorText(err), tc.name)
				}
				require.Equal(t, -1, n, "%s: the reply was written", tc.name)
				add(t, c, 3, 4)
			}
		})
	}
}

// A panicking method: a ServerError for the caller, the server goes on, the
// panic is logged through the logger given, and nothing is logged anywhere
// else (by a server or client given no logger either).
func testPanic(t *testing.T, v Version) {
	global := &logBuffer{}
	oldW, oldF, oldS := log.Writer(), log.Flags(), slog.Default()
	slog.SetDefault(global.logger()) // the log package writes there too
	t.Cleanup(func() {
		log.SetOutput(oldW)
		log.SetFlags(oldF)
		slog.SetDefault(oldS)
	})

	e := start(t, v, Options{})
	c := e.dial(Options{})
	var s string
	err := c.Call(context.Background(), "Panicker.Boom", "first", &s)
	require.Error(t, err)
	require.True(t, v.IsServerError(err), "%v (%T) is not a ServerError", err, err)
	add(t, c, 1, 2)
	require.Contains(t, e.logs.String(), PanicText+" (first)", "the panic is logged through the logger")

	silent := startSilent(t, v, Options{})
	sc := silent.dial(Options{})
	err = sc.Call(context.Background(), "Panicker.Boom", "second", &s)
	require.True(t, v.IsServerError(err), "%v (%T) is not a ServerError", err, err)
	add(t, sc, 1, 2)

	require.Empty(t, global.String(), "the library logged without a logger")
}

// When the caller's ctx ends before the reply, the call completes at once
// with ctx's error, and the late reply is never written into reply.
func testCallerCtxEnds(t *testing.T, v Version) {
	for _, via := range []string{"Call", "Go"} {
		for _, end := range []string{"cancel", "deadline"} {
			t.Run(via+"/"+end, func(t *testing.T) {
				e := start(t, v, Options{})
				c := e.dial(Options{})
				var ctx context.Context
				var cancel context.CancelFunc
				want := context.Canceled
				if end == "cancel" {
					ctx, cancel = context.WithCancel(context.Background())
				} else {
					ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
					want = context.DeadlineExceeded
				}
				defer cancel()

				reply := "untouched"
				var done <-chan error
				if via == "Call" {
					done = callAsync(ctx, c, "Blocker.Hold", "late", &reply)
				} else {
					done = c.Go(ctx, "Blocker.Hold", "late", &reply)
				}
				recv(t, e.svc.blocker.Entered, "the method's start")
				if end == "cancel" {
					cancel()
				}
				<-ctx.Done()
				ended := time.Now()
				err := recv(t, done, "the call")
				require.Less(t, time.Since(ended), time.Second, "the call did not complete at once")
				require.ErrorIs(t, err, want)

				// Let the method reply, and the reply travel.
				e.svc.blocker.Release()
				require.Equal(t, "late", recv(t, e.svc.blocker.Returned, "the method's return"))
				add(t, c, 1, 2)
				time.Sleep(quiet)
				require.Equal(t, "untouched", reply, "the late reply was written into reply")
			})
		}
	}
}

// Go returns at once even when the request cannot be written: the server
// never reads. Close then completes the stuck calls with ErrShutdown.
func testGoDoesNotBlock(t *testing.T, v Version) {
	f := startFake(t, func(net.Conn) {}) // accepts, never reads
	c := dial(t, v, f.addr, Options{Codec: codec.Raw})
	big := make([]byte, 12<<20) // two of them are more than loopback buffers hold

	type pair struct{ a, b <-chan error }
	issued := make(chan pair, 1)
	var ra, rb []byte
	go func() {
		a := c.Go(context.Background(), "Echo.Echo", big, &ra)
		b := c.Go(context.Background(), "Echo.Echo", big, &rb)
		issued <- pair{a, b}
	}()
	var p pair
	select {
	case p = <-issued:
	case <-time.After(guard):
		// A Go that waits for this server would never return. (The bound is
		// not tighter: encoding 24 MiB under -race on a busy machine can take
		// most of a second, and that is not blocking.)
		t.Fatal("Go blocked on a server that does not read")
	}
	none(t, p.a, "a call with no reply completed")

	require.NotPanics(t, func() { _ = c.Close() })
	require.ErrorIs(t, recv(t, p.a, "the first call after Close"), v.ErrShutdown)
	require.ErrorIs(t, recv(t, p.b, "the second call after Close"), v.ErrShutdown)
}

// Many calls issued with Go at once all complete with their own reply.
func testGoMany(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	const n = 200
	replies := make([]int, n)
	dones := make([]<-chan error, n)
	for i := range n {
		dones[i] = c.Go(context.Background(), "Arith.Add", Args{i, 1000 * i}, &replies[i])
	}
	for i := range n {
		require.NoError(t, recv(t, dones[i], "a call"))
	}
	for i := range n {
		require.Equal(t, 1001*i, replies[i], "call %d", i)
	}
}

// Call and Go with a ctx that has already ended complete with its error.
func testGoCancelledCtx(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()

	var n int
	require.ErrorIs(t, recv(t, c.Go(cancelled, "Arith.Add", Args{1, 2}, &n), "Go"), context.Canceled)
	require.ErrorIs(t, recv(t, c.Go(expired, "Arith.Add", Args{1, 2}, &n), "Go"), context.DeadlineExceeded)
	require.ErrorIs(t, c.Call(cancelled, "Arith.Add", Args{1, 2}, &n), context.Canceled)
	require.ErrorIs(t, c.Call(expired, "Arith.Add", Args{1, 2}, &n), context.DeadlineExceeded)
	require.Zero(t, n)
	add(t, c, 1, 2)
}

// Notify runs the method and returns nil.
func testNotify(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	require.NoError(t, c.Notify(context.Background(), "Recorder.Record", "first"))
	require.Equal(t, "first", recv(t, e.svc.recorder.Got, "the notification"))
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	require.NoError(t, c.Notify(ctx, "Recorder.Record", "second"))
	require.Equal(t, "second", recv(t, e.svc.recorder.Got, "the notification"))
	add(t, c, 1, 2)
}

// A one-way request gets no reply on the wire.
func testNotifyHasNoReply(t *testing.T, v Version) {
	e := start(t, v, Options{})
	conn := e.raw()
	req, err := service.AppendRequest(context.Background(), nil, protocol.TypeOneway, 7, codec.Gob, "Recorder.Record", "raw")
	require.NoError(t, err)
	_, err = conn.Write(req)
	require.NoError(t, err)
	require.Equal(t, "raw", recv(t, e.svc.recorder.Got, "the notification"))
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(quiet)))
	b := make([]byte, 64)
	n, _ := conn.Read(b) // a timeout, or the end of a connection v1 closes
	require.Zero(t, n, "the server sent %q after a one-way request", b[:n])
}

// 50 goroutines share a client, 20 calls each.
func testConcurrency(t *testing.T, v Version) {
	e := start(t, v, Options{})
	c := e.dial(Options{})
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			for i := range 20 {
				var n int
				method, want := "Arith.Add", g*1000+i
				if i%2 == 1 {
					method, want = "Arith.Mul", g*1000*i
				}
				if !assert.NoError(t, c.Call(context.Background(), method, Args{g * 1000, i}, &n)) {
					return
				}
				if !assert.Equal(t, want, n, "%s(%d, %d)", method, g*1000, i) {
					return
				}
			}
		})
	}
	wg.Wait()
}
