package service

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// parse decodes the one frame of wire.
func parse(t *testing.T, wire []byte) *protocol.Frame {
	t.Helper()
	var f protocol.Frame
	n, err := protocol.Parse(wire, 0, &f)
	require.NoError(t, err)
	require.Equal(t, len(wire), n)
	return &f
}

// handle runs req through HandleWith and decodes the reply as a client does.
func handle(t *testing.T, r *Registry, req *protocol.Frame, icpt Interceptor, reply any) error {
	t.Helper()
	out := r.HandleWith(context.Background(), req, nil, icpt)
	rep := parse(t, out)
	require.Equal(t, protocol.TypeReply, rep.Type)
	require.Equal(t, req.Seq, rep.Seq)
	return DecodeReply(rep, reply)
}

// request encodes a TypeRequest frame with seq 7 and decodes it.
func request(t *testing.T, ctx context.Context, c codec.Codec, method string, args any, md map[string]string) *protocol.Frame {
	t.Helper()
	wire, err := AppendRequestMetadata(ctx, nil, protocol.TypeRequest, 7, c, method, args, md, 0)
	require.NoError(t, err)
	return parse(t, wire)
}

func TestAppendRequestMetadata(t *testing.T) {
	bg := context.Background()
	plain, err := AppendRequest(bg, []byte("prefix"), protocol.TypeRequest, 3, codec.JSON, "Arith.Add", Args{1, 2})
	require.NoError(t, err)
	for _, md := range []map[string]string{nil, {}} {
		got, err := AppendRequestMetadata(bg, []byte("prefix"), protocol.TypeRequest, 3, codec.JSON, "Arith.Add", Args{1, 2}, md, 0)
		require.NoError(t, err)
		require.Equal(t, plain, got, "no metadata: AppendRequest's bytes")
	}

	ctx, cancel := context.WithTimeout(bg, time.Minute)
	defer cancel()
	md := map[string]string{"request-id": "42", "tenant": "acme"}
	wire, err := AppendRequestMetadata(ctx, []byte("prefix"), protocol.TypeOneway, 3, codec.JSON, "Arith.Add", Args{1, 2}, md, 0)
	require.NoError(t, err)
	require.Equal(t, "prefix", string(wire[:6]))
	f := parse(t, wire[6:])
	require.Equal(t, protocol.TypeOneway, f.Type)
	require.Equal(t, protocol.FlagMetadata|protocol.FlagDeadline, f.Flags)
	require.Equal(t, "Arith.Add", string(f.Method))
	block, payload, err := protocol.SplitMetadata(f.Body, 0)
	require.NoError(t, err)
	got := map[string]string{}
	protocol.RangeMetadata(block, func(k, v []byte) bool { got[string(k)] = string(v); return true })
	require.Equal(t, md, got)
	var args Args
	require.NoError(t, codec.JSON.Unmarshal(payload, &args))
	require.Equal(t, Args{1, 2}, args)
}

func TestAppendRequestMetadataErrors(t *testing.T) {
	bg := context.Background()
	tests := []struct {
		name   string
		md     map[string]string
		maxMD  int
		method string
		args   any
		want   error
	}{
		{"block over the default limit", map[string]string{"k": strings.Repeat("v", protocol.DefaultMaxMetadataSize)}, 0, "A.B", []byte{}, protocol.ErrMetadataTooLarge},
		{"block over a given limit", map[string]string{"k": "12345"}, 11, "A.B", []byte{}, protocol.ErrMetadataTooLarge},
		{"key too long", map[string]string{strings.Repeat("k", 1<<16): ""}, 1 << 20, "A.B", []byte{}, protocol.ErrMetadataTooLarge},
		{"method too long", map[string]string{"k": "v"}, 0, strings.Repeat("m", 1<<16), []byte{}, protocol.ErrFrameTooLarge},
		{"unencodable args", map[string]string{"k": "v"}, 0, "A.B", "not bytes", codec.ErrUnsupportedType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("keep")
			out, err := AppendRequestMetadata(bg, dst, protocol.TypeRequest, 1, codec.Raw, tt.method, tt.args, tt.md, tt.maxMD)
			require.ErrorIs(t, err, tt.want)
			require.Equal(t, "keep", string(out))
		})
	}
	// and a block of exactly the given limit is fine.
	_, err := AppendRequestMetadata(bg, nil, protocol.TypeRequest, 1, codec.Raw, "A.B", []byte{}, map[string]string{"k": "12345"}, 12)
	require.NoError(t, err)
}

// Handle skips the metadata block: the arguments decode, in every codec,
// and one-way requests run.
func TestMetadataThroughHandle(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	bg := context.Background()
	md := map[string]string{"authorization": "Bearer x", "": "\x00"}
	for _, c := range []codec.Codec{codec.Gob, codec.JSON} {
		t.Run(c.Name(), func(t *testing.T) {
			var n int
			require.NoError(t, handle(t, r, request(t, bg, c, "Arith.Add", Args{2, 3}, md), nil, &n))
			require.Equal(t, 5, n)
			require.NoError(t, handle(t, r, request(t, bg, c, "Arith.Mul", &Args{2, 3}, md), nil, &n))
			require.Equal(t, 6, n)
			err := handle(t, r, request(t, bg, c, "Arith.Div", Args{1, 0}, md), nil, &n)
			require.Equal(t, ServerError("divide by zero"), err)
		})
	}
	var b []byte
	require.NoError(t, handle(t, r, request(t, bg, codec.Raw, "Arith.Bytes", []byte("raw"), md), nil, &b))
	require.Equal(t, "raw!", string(b), "the payload is the bytes after the block")

	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	var got string
	require.NoError(t, handle(t, r, request(t, ctx, codec.Gob, "Arith.Deadline", 0, md), nil, &got))
	require.Equal(t, "5s", got, "the deadline still reaches the method")

	wire, err := AppendRequestMetadata(bg, nil, protocol.TypeOneway, 1, codec.Gob, "Arith.Add", Args{1, 2}, md, 0)
	require.NoError(t, err)
	require.Equal(t, "x", string(r.Handle(bg, parse(t, wire), []byte("x"))), "a one-way call has no reply")
}

// A malformed metadata block is answered like undecodable arguments.
func TestMalformedMetadata(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	args, err := codec.Gob.Marshal(nil, Args{1, 2})
	require.NoError(t, err)
	huge := make([]byte, 4+protocol.DefaultMaxMetadataSize+1)
	huge[1], huge[3] = 1, 1 // mdlen 65537
	tests := []struct {
		name string
		body []byte
		want string
	}{
		{"block overruns the body", []byte{0, 0, 0, 9, 0, 1, 'k'}, "rpc: decoding metadata of Arith.Add: protocol: malformed metadata: block of 9 bytes announced in a body of 7"},
		{"empty body", nil, "rpc: decoding metadata of Arith.Add: protocol: malformed metadata: a body of 0 bytes"},
		{"pair overruns", append([]byte{0, 0, 0, 3, 0, 9, 'k'}, args...), "key of 9 bytes overruns the block"},
		{"over the limit", huge, "rpc: decoding metadata of Arith.Add: protocol: metadata too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := protocol.Header{Type: protocol.TypeRequest, Codec: codec.Gob.ID(), Flags: protocol.FlagMetadata, Seq: 9}
			wire, err := protocol.AppendFrame(nil, &h, "Arith.Add", "", tt.body)
			require.NoError(t, err)
			var n int
			called := false
			err = handle(t, r, parse(t, wire), func(context.Context, string, any, any, func(context.Context) error) error {
				called = true
				return nil
			}, &n)
			require.IsType(t, ServerError(""), err)
			require.ErrorContains(t, err, tt.want)
			require.False(t, called, "answered before the interceptor")
			require.Zero(t, n)
		})
	}
}

// A reader that ignores FlagMetadata (a server built before it) sees the
// block as part of the arguments: an error reply, not a crash.
func TestMetadataUnknownToTheReader(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	req := request(t, context.Background(), codec.Gob, "Arith.Add", Args{2, 3}, map[string]string{"k": "v"})
	req.Flags &^= protocol.FlagMetadata
	err := handle(t, r, req, nil, new(int))
	require.IsType(t, ServerError(""), err)
	require.ErrorContains(t, err, "rpc: decoding arguments of Arith.Add")
}

// seen is what a recording interceptor saw.
type seen struct {
	method            string
	hasDeadline       bool
	left              time.Duration
	args, replyBefore any
	replyAfter        int
	invokeErr         error
	calls             int
}

func recorder(s *seen) Interceptor {
	return func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
		s.calls++
		s.method = method
		d, ok := ctx.Deadline()
		s.hasDeadline, s.left = ok, time.Until(d)
		s.args = args
		s.replyBefore = *reply.(*int)
		s.invokeErr = invoke(ctx)
		s.replyAfter = *reply.(*int)
		return s.invokeErr
	}
}

func TestInterceptorSees(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	md := map[string]string{"k": "v"}

	tests := []struct {
		name     string
		ctx      context.Context
		method   string
		args     any
		md       map[string]string
		wantArgs any
		want     int
		wantErr  string
	}{
		{"value args, deadline, no ctx in the method", ctx, "Arith.Add", Args{2, 3}, nil, Args{2, 3}, 5, ""},
		{"pointer args", context.Background(), "Arith.Mul", &Args{2, 3}, md, &Args{2, 3}, 6, ""},
		{"method error", ctx, "Arith.Div", Args{1, 0}, md, Args{1, 0}, 0, "divide by zero"},
		{"method panic", ctx, "Arith.Panic", 3, nil, 3, 0, "rpc: method Arith.Panic panicked: boom 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s seen
			var n int
			err := handle(t, r, request(t, tt.ctx, codec.Gob, tt.method, tt.args, tt.md), recorder(&s), &n)
			require.Equal(t, 1, s.calls)
			require.Equal(t, tt.method, s.method)
			require.Equal(t, tt.wantArgs, s.args)
			require.Equal(t, 0, s.replyBefore)
			require.Equal(t, tt.want, s.replyAfter)
			_, hasDeadline := tt.ctx.Deadline()
			require.Equal(t, hasDeadline, s.hasDeadline, "the interceptor's ctx has the caller's deadline")
			if hasDeadline {
				require.InDelta(t, 5*time.Second, s.left, float64(time.Second))
			}
			if tt.wantErr == "" {
				require.NoError(t, s.invokeErr)
				require.NoError(t, err)
				require.Equal(t, tt.want, n)
				return
			}
			require.Equal(t, ServerError(tt.wantErr), s.invokeErr, "invoke returns the method's outcome")
			require.Equal(t, ServerError(tt.wantErr), err)
		})
	}
}

// Counter counts its calls.
type Counter struct{ n atomic.Int32 }

func (c *Counter) Inc(_ int, reply *int) error { *reply = int(c.n.Add(1)); return nil }

func TestInterceptorShortCircuits(t *testing.T) {
	r := NewRegistry(nil)
	cnt := new(Counter)
	require.NoError(t, r.Register(cnt))
	req := request(t, context.Background(), codec.JSON, "Counter.Inc", 0, nil)

	deny := func(context.Context, string, any, any, func(context.Context) error) error {
		return errors.New("permission denied")
	}
	var n int
	err := handle(t, r, req, deny, &n)
	require.Equal(t, ServerError("permission denied"), err)
	require.Zero(t, cnt.n.Load(), "the method did not run")

	// an interceptor that answers itself (a cache)
	cached := func(_ context.Context, _ string, _, reply any, _ func(context.Context) error) error {
		*reply.(*int) = 99
		return nil
	}
	require.NoError(t, handle(t, r, req, cached, &n))
	require.Equal(t, 99, n)
	require.Zero(t, cnt.n.Load())

	// one that runs the method twice (retries, say)
	twice := func(ctx context.Context, _ string, _, _ any, invoke func(context.Context) error) error {
		_ = invoke(ctx)
		return invoke(ctx)
	}
	require.NoError(t, handle(t, r, req, twice, &n))
	require.Equal(t, 2, n)

	// one that passes a nil ctx
	nilCtx := func(_ context.Context, _ string, _, _ any, invoke func(context.Context) error) error {
		return invoke(nil)
	}
	err = handle(t, r, req, nilCtx, &n)
	require.Equal(t, ServerError("rpc: interceptor of Counter.Inc invoked it with a nil context"), err)
	require.Equal(t, int32(2), cnt.n.Load())
}

func TestInterceptorPanics(t *testing.T) {
	var logs bytes.Buffer
	r := NewRegistry(slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, r.Register(new(Arith)))
	req := request(t, context.Background(), codec.Gob, "Arith.Add", Args{1, 2}, nil)

	before := func(context.Context, string, any, any, func(context.Context) error) error {
		panic("icpt boom")
	}
	err := handle(t, r, req, before, new(int))
	require.Equal(t, ServerError("rpc: interceptor of Arith.Add panicked: icpt boom"), err)
	require.Contains(t, logs.String(), "interceptor panicked")
	require.Contains(t, logs.String(), "icpt boom")
	require.Contains(t, logs.String(), "metadata_test.go", "the stack is logged")

	// a panic after the method ran: its reply is not sent.
	after := func(ctx context.Context, _ string, _, _ any, invoke func(context.Context) error) error {
		_ = invoke(ctx)
		panic("late boom")
	}
	var n int
	err = handle(t, r, req, after, &n)
	require.Equal(t, ServerError("rpc: interceptor of Arith.Add panicked: late boom"), err)
	require.Zero(t, n)

	// and the server goes on.
	require.NoError(t, handle(t, r, req, nil, &n))
	require.Equal(t, 3, n)
}

type ctxKey struct{}

// Values reads what an interceptor put on its ctx.
type Values struct{}

func (Values) Get(ctx context.Context, _ int, reply *string) error {
	v, _ := ctx.Value(ctxKey{}).(string)
	d, ok := ctx.Deadline()
	*reply = v
	if ok {
		*reply += " " + time.Until(d).Round(time.Second).String()
	}
	return nil
}

func TestInterceptorReplacesContext(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(Values{}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	md := map[string]string{"tenant": "acme"}
	req := request(t, ctx, codec.JSON, "Values.Get", 0, md)

	// v4's use: the request's metadata on the method's ctx.
	fromMD := func(ctx context.Context, _ string, _, _ any, invoke func(context.Context) error) error {
		block, _, err := protocol.SplitMetadata(req.Body, 0)
		if err != nil {
			return err
		}
		var tenant string
		protocol.RangeMetadata(block, func(k, v []byte) bool {
			if string(k) == "tenant" {
				tenant = string(v)
			}
			return true
		})
		return invoke(context.WithValue(ctx, ctxKey{}, tenant))
	}
	var got string
	require.NoError(t, handle(t, r, req, fromMD, &got))
	require.Equal(t, "acme 5s", got, "a value added, the deadline kept")

	// a ctx of the interceptor's own, without the deadline
	own := func(_ context.Context, _ string, _, _ any, invoke func(context.Context) error) error {
		return invoke(context.WithValue(context.Background(), ctxKey{}, "own"))
	}
	require.NoError(t, handle(t, r, req, own, &got))
	require.Equal(t, "own", got)
}

func TestInterceptorNotCalled(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	called := 0
	icpt := func(ctx context.Context, _ string, _, _ any, invoke func(context.Context) error) error {
		called++
		return invoke(ctx)
	}
	bg := context.Background()
	for _, tt := range []struct{ method, want string }{
		{"Nope.Add", "rpc: can't find service Nope.Add"},
		{"Arith.Nope", "rpc: can't find method Arith.Nope"},
		{"Arith", "rpc: service/method request ill-formed: Arith"},
	} {
		err := handle(t, r, request(t, bg, codec.Gob, tt.method, Args{}, nil), icpt, new(int))
		require.Equal(t, ServerError(tt.want), err)
	}
	err := handle(t, r, request(t, bg, codec.Gob, "Arith.Add", "not Args", nil), icpt, new(int))
	require.ErrorContains(t, err, "rpc: decoding arguments of Arith.Add")
	req := request(t, bg, codec.Gob, "Arith.Add", Args{}, nil)
	req.Codec = 200
	require.ErrorContains(t, handle(t, r, req, icpt, new(int)), "unknown codec")
	require.Zero(t, called)
}

func TestInterceptorOneway(t *testing.T) {
	var logs bytes.Buffer
	r := NewRegistry(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	cnt := new(Counter)
	require.NoError(t, r.Register(cnt))
	var s seen
	wire, err := AppendRequestMetadata(context.Background(), nil, protocol.TypeOneway, 1, codec.Gob, "Counter.Inc", 0, map[string]string{"k": "v"}, 0)
	require.NoError(t, err)
	out := r.HandleWith(context.Background(), parse(t, wire), []byte("x"), recorder(&s))
	require.Equal(t, "x", string(out), "a one-way call has no reply")
	require.Equal(t, 1, s.calls)
	require.Equal(t, 1, s.replyAfter)
	require.Equal(t, int32(1), cnt.n.Load())

	deny := func(context.Context, string, any, any, func(context.Context) error) error {
		return errors.New("denied")
	}
	out = r.HandleWith(context.Background(), parse(t, wire), nil, deny)
	require.Empty(t, out)
	require.Contains(t, logs.String(), "denied")
}

// Handle is HandleWith with no interceptor, byte for byte.
func TestHandleIsHandleWithNil(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	for _, req := range []*protocol.Frame{
		request(t, context.Background(), codec.Gob, "Arith.Add", Args{1, 2}, nil),
		request(t, context.Background(), codec.JSON, "Arith.Div", Args{1, 0}, map[string]string{"k": "v"}),
		request(t, context.Background(), codec.Gob, "Nope.Nope", Args{}, nil),
	} {
		require.Equal(t, r.Handle(context.Background(), req, nil), r.HandleWith(context.Background(), req, nil, nil))
	}
}

// handleAllocsBefore is what Handle allocated for BenchmarkHandle's request
// (Raw codec, 64 bytes, Arith.Bytes) before interceptors and metadata were
// added, measured with Go 1.26.
const handleAllocsBefore = 7

// Neither the interceptor hook nor the metadata cost Handle an allocation.
func TestHandleAllocs(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	allocs := func(md map[string]string) float64 {
		req := request(t, context.Background(), codec.Raw, "Arith.Bytes", make([]byte, 64), md)
		buf := make([]byte, 0, 512)
		return testing.AllocsPerRun(200, func() {
			buf = r.Handle(context.Background(), req, buf[:0])
		})
	}
	plain := allocs(nil)
	require.LessOrEqual(t, plain, float64(handleAllocsBefore))
	require.Equal(t, plain, allocs(map[string]string{"authorization": "Bearer x", "request-id": "42"}), "skipping the metadata allocates nothing")
}
