package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type Args struct{ A, B int }

type hidden struct{ A int }

// Arith has one method per registration rule: the comment says whether the
// registry serves it.
type Arith struct{}

func (Arith) Add(args Args, reply *int) error   { *reply = args.A + args.B; return nil } // served: value args
func (*Arith) Mul(args *Args, reply *int) error { *reply = args.A * args.B; return nil } // served: pointer args, pointer receiver
func (Arith) Div(args Args, reply *int) error { // served: returns an error
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	*reply = args.A / args.B
	return nil
}
func (Arith) Deadline(ctx context.Context, _ int, reply *string) error { // served: ctx first
	if d, ok := ctx.Deadline(); ok {
		*reply = time.Until(d).Round(time.Second).String()
		return nil
	}
	*reply = "none"
	return nil
}
func (Arith) Panic(args int, reply *int) error       { panic(fmt.Sprint("boom ", args)) }       // served: panics
func (Arith) List(n int, reply *[]int) error         { *reply = append(*reply, n); return nil } // served: slice reply
func (Arith) Map(n int, reply *map[string]int) error { (*reply)["n"] = n; return nil }          // served: map reply
func (Arith) Bytes(b []byte, reply *[]byte) error    { *reply = append(b, '!'); return nil }    // served: builtin types

func (Arith) NoReply(args Args) error                            { return nil }    // skipped: one argument
func (Arith) ThreeArgs(a, b int, reply *int) error               { return nil }    // skipped: three arguments
func (Arith) ValueReply(args Args, reply int) error              { return nil }    // skipped: reply not a pointer
func (Arith) HiddenArgs(args hidden, reply *int) error           { return nil }    // skipped: unexported args
func (Arith) HiddenReply(args int, reply *hidden) error          { return nil }    // skipped: unexported reply
func (Arith) NoError(args int, reply *int)                       {}                // skipped: no result
func (Arith) IntResult(args int, reply *int) int                 { return 0 }      // skipped: result not error
func (Arith) TwoResults(args int, reply *int) (int, error)       { return 0, nil } // skipped: two results
func (Arith) CtxSecond(a int, ctx context.Context, r *int) error { return nil }    // skipped: ctx not first
func (Arith) unexported(args int, reply *int) error              { return nil }    // skipped: unexported

var _ = Arith.unexported

type arith struct{ Arith }

type Empty struct{}

type PtrOnly struct{}

func (*PtrOnly) Get(args int, reply *int) error { return nil }

func TestRegisterRules(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	require.Equal(t, []string{
		"Arith.Add", "Arith.Bytes", "Arith.Deadline", "Arith.Div", "Arith.List",
		"Arith.Map", "Arith.Mul", "Arith.Panic",
	}, r.Methods())

	// A value receiver has only the value methods.
	r = NewRegistry(nil)
	require.NoError(t, r.Register(Arith{}))
	assert.NotContains(t, r.Methods(), "Arith.Mul")
	assert.Contains(t, r.Methods(), "Arith.Add")
}

func TestRegisterErrors(t *testing.T) {
	tests := []struct {
		name    string
		do      func(r *Registry) error
		wantErr string // "" means success
	}{
		{"exported type", func(r *Registry) error { return r.Register(new(Arith)) }, ""},
		{"unexported type", func(r *Registry) error { return r.Register(new(arith)) }, "type arith is not exported"},
		{"unexported type by name", func(r *Registry) error { return r.RegisterName("Calc", new(arith)) }, ""},
		{"no suitable method", func(r *Registry) error { return r.Register(new(Empty)) }, "type Empty has no exported methods of suitable type"},
		{"value of pointer-method type", func(r *Registry) error { return r.Register(PtrOnly{}) }, "hint: pass a pointer to value of that type"},
		{"pointer of pointer-method type", func(r *Registry) error { return r.Register(&PtrOnly{}) }, ""},
		{"unnamed type", func(r *Registry) error { return r.Register(new(struct{ Arith })) }, "no service name"},
		{"builtin type", func(r *Registry) error { return r.Register(new(int)) }, "type int is not exported"},
		{"empty name", func(r *Registry) error { return r.RegisterName("", new(Arith)) }, "empty service name"},
		{"nil", func(r *Registry) error { return r.Register(nil) }, "nil receiver"},
		{"duplicate", func(r *Registry) error {
			require.NoError(t, r.Register(new(Arith)))
			return r.Register(Arith{})
		}, "service already defined: Arith"},
		{"same type, other name", func(r *Registry) error {
			require.NoError(t, r.Register(new(Arith)))
			return r.RegisterName("Arith2", new(Arith))
		}, ""},
		{"dotted name", func(r *Registry) error { return r.RegisterName("pkg.v1.Arith", new(Arith)) }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do(NewRegistry(nil))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// roundTrip encodes a request as a client does, runs it through Handle and
// decodes the reply as a client does.
func roundTrip(t *testing.T, r *Registry, ctx context.Context, c codec.Codec, method string, args, reply any) error {
	t.Helper()
	wire, err := AppendRequest(ctx, nil, protocol.TypeRequest, 7, c, method, args)
	require.NoError(t, err)
	var req protocol.Frame
	n, err := protocol.Parse(wire, 0, &req)
	require.NoError(t, err)
	require.Equal(t, len(wire), n)

	out := r.Handle(context.Background(), &req, []byte("prefix"))
	require.Equal(t, "prefix", string(out[:6]), "Handle appends")
	var rep protocol.Frame
	n, err = protocol.Parse(out[6:], 0, &rep)
	require.NoError(t, err)
	require.Equal(t, len(out)-6, n, "one reply frame")
	require.Equal(t, protocol.TypeReply, rep.Type)
	require.Equal(t, uint64(7), rep.Seq)
	return DecodeReply(&rep, reply)
}

func TestDispatch(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	require.NoError(t, r.RegisterName("pkg.v1.Arith", new(Arith)))
	bg := context.Background()

	for _, c := range []codec.Codec{codec.Gob, codec.JSON} {
		t.Run(c.Name(), func(t *testing.T) {
			var n int
			require.NoError(t, roundTrip(t, r, bg, c, "Arith.Add", Args{2, 3}, &n))
			require.Equal(t, 5, n)
			require.NoError(t, roundTrip(t, r, bg, c, "Arith.Mul", &Args{2, 3}, &n))
			require.Equal(t, 6, n)
			require.NoError(t, roundTrip(t, r, bg, c, "pkg.v1.Arith.Add", Args{1, 1}, &n))
			require.Equal(t, 2, n)

			var list []int
			require.NoError(t, roundTrip(t, r, bg, c, "Arith.List", 4, &list))
			require.Equal(t, []int{4}, list)
			var m map[string]int
			require.NoError(t, roundTrip(t, r, bg, c, "Arith.Map", 9, &m))
			require.Equal(t, map[string]int{"n": 9}, m)
		})
	}

	var b []byte
	require.NoError(t, roundTrip(t, r, bg, codec.Gob, "Arith.Bytes", []byte("hi"), &b))
	require.Equal(t, "hi!", string(b))
	require.NoError(t, roundTrip(t, r, bg, codec.Raw, "Arith.Bytes", []byte("raw"), &b))
	require.Equal(t, "raw!", string(b))

	// A nil reply discards the body.
	require.NoError(t, roundTrip(t, r, bg, codec.Gob, "Arith.Add", Args{2, 3}, nil))
}

func TestDispatchErrors(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	bg := context.Background()
	tests := []struct {
		name, method string
		args         any
		c            codec.Codec
		want         string
	}{
		{"method error", "Arith.Div", Args{1, 0}, codec.Gob, "divide by zero"},
		{"unknown service", "Nope.Add", Args{}, codec.Gob, "rpc: can't find service Nope.Add"},
		{"unknown method", "Arith.Nope", Args{}, codec.Gob, "rpc: can't find method Arith.Nope"},
		{"skipped method", "Arith.NoReply", Args{}, codec.Gob, "rpc: can't find method Arith.NoReply"},
		{"no dot", "Arith", Args{}, codec.Gob, "rpc: service/method request ill-formed: Arith"},
		{"empty", "", Args{}, codec.Gob, "rpc: service/method request ill-formed: "},
		{"undecodable args", "Arith.Add", "not Args", codec.Gob, "rpc: decoding arguments of Arith.Add"},
		{"wrong codec for args", "Arith.Add", []byte("raw bytes"), codec.Raw, "rpc: decoding arguments of Arith.Add"},
		{"panic", "Arith.Panic", 3, codec.Gob, "rpc: method Arith.Panic panicked: boom 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n int
			err := roundTrip(t, r, bg, tt.c, tt.method, tt.args, &n)
			var se ServerError
			require.ErrorAs(t, err, &se)
			require.Contains(t, string(se), tt.want)
			require.Zero(t, n, "an error reply leaves reply alone")
		})
	}
}

func TestUnknownCodecID(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	wire, err := AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Gob, "Arith.Add", Args{})
	require.NoError(t, err)
	wire[4] = 200 // the codec ID
	var req, rep protocol.Frame
	_, err = protocol.Parse(wire, 0, &req)
	require.NoError(t, err)
	out := r.Handle(context.Background(), &req, nil)
	_, err = protocol.Parse(out, 0, &rep)
	require.NoError(t, err)
	err = DecodeReply(&rep, new(int))
	require.ErrorAs(t, err, new(ServerError))
	require.ErrorContains(t, err, "unknown codec")

	// and a client that receives a reply in a codec it lacks gets an error.
	rep = protocol.Frame{Header: protocol.Header{Type: protocol.TypeReply, Codec: 200}}
	require.ErrorIs(t, DecodeReply(&rep, new(int)), codec.ErrUnknownCodec)
}

func TestPanicIsLogged(t *testing.T) {
	var logs bytes.Buffer
	r := NewRegistry(slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, r.Register(new(Arith)))
	err := roundTrip(t, r, context.Background(), codec.Gob, "Arith.Panic", 1, new(int))
	require.ErrorAs(t, err, new(ServerError))
	require.Contains(t, logs.String(), "method panicked")
	require.Contains(t, logs.String(), "boom 1")
	require.Contains(t, logs.String(), "service_test.go", "the stack is logged")

	// and without a logger the registry says nothing (nothing to capture:
	// it must simply not fail).
	r = NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	require.Error(t, roundTrip(t, r, context.Background(), codec.Gob, "Arith.Panic", 1, new(int)))
}

func TestDeadlineReachesMethod(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	var got string
	require.NoError(t, roundTrip(t, r, context.Background(), codec.Gob, "Arith.Deadline", 0, &got))
	require.Equal(t, "none", got, "no deadline, no default timeout")

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, roundTrip(t, r, ctx, codec.Gob, "Arith.Deadline", 0, &got))
	require.Equal(t, "5s", got)
}

type Waiter struct{ done chan error }

func (w *Waiter) Wait(ctx context.Context, _ int, _ *int) error {
	<-ctx.Done()
	w.done <- ctx.Err()
	return ctx.Err()
}

func TestMethodContextEnds(t *testing.T) {
	r := NewRegistry(nil)
	w := &Waiter{done: make(chan error, 1)}
	require.NoError(t, r.Register(w))

	// with the caller's budget
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err := roundTrip(t, r, ctx, codec.Gob, "Waiter.Wait", 0, new(int))
	require.ErrorContains(t, err, context.DeadlineExceeded.Error())
	require.ErrorIs(t, <-w.done, context.DeadlineExceeded)

	// and with the server's base context
	wire, err := AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Gob, "Waiter.Wait", 0)
	require.NoError(t, err)
	var req protocol.Frame
	_, err = protocol.Parse(wire, 0, &req)
	require.NoError(t, err)
	base, stop := context.WithCancel(context.Background())
	go func() { time.Sleep(10 * time.Millisecond); stop() }()
	r.Handle(base, &req, nil)
	require.ErrorIs(t, <-w.done, context.Canceled)
}

func TestOneway(t *testing.T) {
	var logs bytes.Buffer
	r := NewRegistry(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	require.NoError(t, r.Register(new(Arith)))
	for _, method := range []string{"Arith.Add", "Arith.Div", "Nope.Nope"} {
		wire, err := AppendRequest(context.Background(), nil, protocol.TypeOneway, 1, codec.Gob, method, Args{1, 0})
		require.NoError(t, err)
		var req protocol.Frame
		_, err = protocol.Parse(wire, 0, &req)
		require.NoError(t, err)
		out := r.Handle(context.Background(), &req, []byte("x"))
		require.Equal(t, "x", string(out), "a one-way call has no reply")
	}
	require.Contains(t, logs.String(), "divide by zero")
}

type Unencodable struct{}

func (Unencodable) Get(_ int, reply *func()) error { *reply = func() {}; return nil }

func TestUnencodableReply(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(Unencodable{}))
	err := roundTrip(t, r, context.Background(), codec.Gob, "Unencodable.Get", 0, new(int))
	require.ErrorAs(t, err, new(ServerError))
	require.ErrorContains(t, err, "rpc: encoding reply of Unencodable.Get")
}

func TestAppendRequestErrors(t *testing.T) {
	dst := []byte("keep")
	out, err := AppendRequest(context.Background(), dst, protocol.TypeRequest, 1, codec.Raw, "A.B", "not bytes")
	require.ErrorIs(t, err, codec.ErrUnsupportedType)
	require.Equal(t, "keep", string(out))
	_, err = AppendRequest(context.Background(), dst, protocol.TypeRequest, 1, codec.Raw, strings.Repeat("m", 1<<16), nil)
	require.ErrorIs(t, err, protocol.ErrFrameTooLarge)
}

// Registering while requests are served is safe (run with -race).
func TestRegisterWhileServing(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.Register(new(Arith)))
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 50 {
				require.NoError(t, r.RegisterName(fmt.Sprintf("A%d_%d", i, j), new(Arith)))
			}
		})
		wg.Go(func() {
			for range 50 {
				var n int
				require.NoError(t, roundTrip(t, r, context.Background(), codec.Gob, "Arith.Add", Args{1, 2}, &n))
			}
		})
	}
	wg.Wait()
	require.Len(t, r.Methods(), 8*(1+4*50))
}

func BenchmarkHandle(b *testing.B) {
	r := NewRegistry(nil)
	require.NoError(b, r.Register(new(Arith)))
	wire, err := AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Raw, "Arith.Bytes", make([]byte, 64))
	require.NoError(b, err)
	var req protocol.Frame
	_, err = protocol.Parse(wire, 0, &req)
	require.NoError(b, err)
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.Handle(context.Background(), &req, buf[:0])
	}
}

// fresh checks that its slice reply starts empty and not nil, as net/rpc's.
type fresh struct{}

func (fresh) List(n int, reply *[]int) error {
	if *reply == nil || len(*reply) != 0 {
		return fmt.Errorf("reply starts as %#v", *reply)
	}
	*reply = append(*reply, n)
	return nil
}

// A slice reply starts empty and not nil, every call anew: the empty
// slice a method starts from is shared, and what a call appends is not.
func TestSliceReplyStartsEmpty(t *testing.T) {
	r := NewRegistry(nil)
	require.NoError(t, r.RegisterName("fresh", fresh{}))
	for i := range 3 {
		var got []int
		require.NoError(t, roundTrip(t, r, context.Background(), codec.Gob, "fresh.List", i, &got))
		require.Equal(t, []int{i}, got)
	}
}
