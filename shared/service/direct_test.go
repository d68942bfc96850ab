package service

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Node holds pointers, so that a wrong word in a direct call would show as
// wrong data or as a crash of the garbage collector, which the methods
// below run while they hold their arguments.
type Node struct {
	Name string
	Next *Node
	Tags []string
}

type Words []string

type Label string

type Nothing struct{}

// shapes is a receiver of size zero; shapesPtr one with fields, served
// through a pointer. Each has a method per shape of arguments, with and
// without a ctx; their replies say what they received, so that a call that
// passed anything in the wrong place shows. The comment says how each is
// called.
type shapes struct{}

func (shapes) Ptr(a *Node, r *string) error { runtime.GC(); *r = describe(a); return nil } // direct
func (shapes) Slice(a Words, r *string) error { // direct
	runtime.GC()
	*r = strings.Join(a, "+") + fmt.Sprint(len(a), cap(a) >= len(a))
	return nil
}
func (shapes) Str(a Label, r *string) error    { *r = "label " + string(a); return nil }         // direct
func (shapes) Zero(a Nothing, r *string) error { *r = fmt.Sprintf("nothing %v", a); return nil } // direct
func (shapes) Struct(a Node, r *string) error  { runtime.GC(); *r = describe(&a); return nil }   // reflection
func (shapes) Int(a int, r *[]int) error       { *r = append(*r, a, a); return nil }             // reflection
func (shapes) Fail(a *Node, r *string) error   { return errors.New("failed " + a.Name) }         // direct
func (shapes) Boom(a Words, r *string) error   { panic("boom " + a[0]) }                         // direct
func (shapes) Bytes(a []byte, r *[]byte) error { *r = append(*r, a...); return nil }             // direct
func (shapes) CtxPtr(ctx context.Context, a *Node, r *string) error { // direct
	runtime.GC()
	*r = describe(a) + " " + ctxInfo(ctx)
	return nil
}
func (shapes) CtxSlice(ctx context.Context, a Words, r *string) error { // direct
	*r = strings.Join(a, "+") + " " + ctxInfo(ctx)
	return nil
}
func (shapes) CtxStr(ctx context.Context, a Label, r *string) error { // direct
	*r = string(a) + " " + ctxInfo(ctx)
	return nil
}
func (shapes) CtxZero(ctx context.Context, a Nothing, r *string) error { // direct
	*r = "zero " + ctxInfo(ctx)
	return nil
}
func (shapes) CtxInt(ctx context.Context, a int, r *string) error { // reflection
	*r = fmt.Sprint(a) + " " + ctxInfo(ctx)
	return nil
}

type shapesPtr struct {
	prefix string
	calls  int
}

func (s *shapesPtr) Ptr(a *Node, r *string) error { // direct
	s.calls++
	runtime.GC()
	*r = s.prefix + describe(a) + fmt.Sprint(s.calls)
	return nil
}
func (s *shapesPtr) Slice(a Words, r *Words) error { // direct
	*r = append(*r, s.prefix)
	*r = append(*r, a...)
	return nil
}
func (s *shapesPtr) Str(a Label, r *string) error { *r = s.prefix + string(a); return nil } // direct
func (s *shapesPtr) CtxPtr(ctx context.Context, a *Node, r *map[string]string) error { // direct
	(*r)["node"] = s.prefix + describe(a) + " " + ctxInfo(ctx) // one key: gob writes a map's keys in random order
	return nil
}
func (s *shapesPtr) Int(a int, r *int) error { *r = a + len(s.prefix); return nil } // reflection

// valueRcvr has fields and is registered as a value: its methods are called
// by reflection.
type valueRcvr struct{ n int }

func (v valueRcvr) Ptr(a *Node, r *string) error { *r = fmt.Sprint(v.n, describe(a)); return nil }

func describe(n *Node) string {
	if n == nil {
		return "nil"
	}
	return fmt.Sprintf("%s%v>%s", n.Name, n.Tags, describe(n.Next))
}

type shapeKey struct{}

func ctxInfo(ctx context.Context) string {
	_, ok := ctx.Deadline()
	return fmt.Sprintf("deadline=%v value=%v", ok, ctx.Value(shapeKey{}))
}

// Aligned has size zero and the alignment of an int64 (8 on 64-bit
// systems): a zero-size type aligned to more than 1 can move the arguments
// after it on a 32-bit stack (sync/atomic's 64-bit types are aligned to 8
// there), so it is called by reflection.
type Aligned struct{ _ [0]int64 }

func (shapes) Aligned(a Aligned, r *string) error { *r = "aligned"; return nil } // reflection

// outer promotes shapesPtr's methods from a field at a non-zero offset.
type outer struct {
	pad int
	shapesPtr
}

func shapesRegistry(t *testing.T) *Registry {
	t.Helper()
	r := NewRegistry(nil)
	require.NoError(t, r.RegisterName("Z", shapes{}))
	require.NoError(t, r.RegisterName("ZP", &shapes{})) // value methods through a pointer: the compiler's wrappers
	require.NoError(t, r.RegisterName("P", &shapesPtr{prefix: "p:"}))
	require.NoError(t, r.RegisterName("O", &outer{pad: 1, shapesPtr: shapesPtr{prefix: "o:"}}))
	require.NoError(t, r.RegisterName("NP", (*shapesPtr)(nil))) // methods that dereference a nil receiver
	require.NoError(t, r.RegisterName("NZ", (*shapes)(nil)))    // value methods called through a nil pointer
	require.NoError(t, r.RegisterName("V", valueRcvr{n: 5}))
	return r
}

// Each method is called directly exactly when its inputs have the shapes
// directCall lists.
func TestDirectCallChosen(t *testing.T) {
	r := shapesRegistry(t)
	direct := map[string]bool{}
	for name, s := range *r.services.Load() {
		for m, mm := range s.methods {
			direct[name+"."+m] = mm.direct != nil
		}
	}
	want := map[string]bool{"V.Ptr": false}
	for _, z := range []string{"Z", "ZP", "NZ"} {
		for m, d := range map[string]bool{
			"Ptr": true, "Slice": true, "Str": true, "Zero": true, "Fail": true, "Boom": true, "Bytes": true,
			"CtxPtr": true, "CtxSlice": true, "CtxStr": true, "CtxZero": true,
			"Struct": false, "Int": false, "CtxInt": false, "Aligned": false,
		} {
			want[z+"."+m] = d
		}
	}
	for _, p := range []string{"P", "O", "NP"} {
		for m, d := range map[string]bool{"Ptr": true, "Slice": true, "Str": true, "CtxPtr": true, "Int": false} {
			want[p+"."+m] = d
		}
	}
	require.Equal(t, want, direct)

	var got string
	require.NoError(t, roundTrip(t, r, context.Background(), codec.JSON, "Z.Aligned", Aligned{}, &got)) // gob encodes no struct without exported fields
	require.Equal(t, "aligned", got)
}

// Every method answers the same bytes called directly and by reflection,
// with and without a deadline and an interceptor, and whatever the codec.
func TestDirectCallMatchesReflection(t *testing.T) {
	long := &Node{Name: "a", Tags: []string{"x", "y"}, Next: &Node{Name: "b", Next: &Node{Name: "c"}}}
	cases := []struct {
		method string
		args   any
	}{
		{"Z.Ptr", long}, {"Z.Ptr", &Node{}},
		{"Z.Slice", Words{"one", "two", "three"}}, {"Z.Slice", Words{}},
		{"Z.Str", Label("hi")}, {"Z.Zero", Nothing{}},
		{"Z.Struct", *long}, {"Z.Int", 42},
		{"Z.Fail", &Node{Name: "f"}}, {"Z.Boom", Words{"b"}},
		{"Z.CtxPtr", long}, {"Z.CtxSlice", Words{"s"}}, {"Z.CtxStr", Label("l")}, {"Z.CtxZero", Nothing{}}, {"Z.CtxInt", 7},
		{"P.Ptr", long}, {"P.Slice", Words{"w1", "w2"}}, {"P.Str", Label("s")}, {"P.CtxPtr", long}, {"P.Int", 3},
		{"V.Ptr", long},
		{"ZP.Ptr", long}, {"ZP.Slice", Words{"zp"}}, {"ZP.CtxStr", Label("zp")},
		{"O.Ptr", long}, {"O.Slice", Words{"o"}}, {"O.CtxPtr", long}, {"O.Int", 9},
		{"NP.Ptr", long}, {"NP.Str", Label("nil")}, {"NZ.Ptr", long}, {"NZ.CtxSlice", Words{"nil"}},
	}
	icpt := func(ctx context.Context, _ string, _, _ any, invoke func(context.Context) error) error {
		return invoke(context.WithValue(ctx, shapeKey{}, "set"))
	}
	deadline, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	answers := func() []string {
		r := shapesRegistry(t) // a new registry each time: shapesPtr counts its calls
		var out []string
		for _, c := range cases {
			for _, cd := range []codec.Codec{codec.Gob, codec.JSON} {
				for _, ctx := range []context.Context{context.Background(), deadline} {
					for _, ic := range []Interceptor{nil, icpt} {
						req := request(t, ctx, cd, c.method, c.args, nil)
						rep := parse(t, r.HandleWith(context.Background(), req, nil, ic))
						out = append(out, fmt.Sprintf("%s %s deadline=%v icpt=%v: flags %d %q %q", c.method, cd.Name(), ctx != context.Background(), ic != nil, rep.Flags, rep.Error, rep.Body))
					}
				}
			}
		}
		// Raw: the []byte shape.
		req := request(t, context.Background(), codec.Raw, "Z.Bytes", []byte("raw bytes"), nil)
		rep := parse(t, r.Handle(context.Background(), req, nil))
		return append(out, fmt.Sprintf("Z.Bytes raw: %q", rep.Body))
	}
	got := answers()
	directCalls = false
	defer func() { directCalls = true }()
	want := answers()
	require.Equal(t, want, got)

	// And the answers are the methods' own, not two equal wrongs.
	joined := strings.Join(got, "\n")
	for _, s := range []string{
		`a[x y]>b[]>c[]>nil`, `one+two+three3 true`, `label hi`, `nothing {}`, `failed f`, `method Z.Boom panicked: boom b`,
		`deadline=true value=set`, `deadline=false value=<nil>`, `p:a[x y]>b[]>c[]>nil1`, `p:s`, `raw bytes`,
		`o:a[x y]>b[]>c[]>nil1`, `invalid memory address or nil pointer dereference`,
		`value method github.com/rpcsteps/rpcsteps/shared/service.shapes.Ptr called using nil *shapes pointer`,
	} {
		require.Contains(t, joined, s)
	}
}

// Direct calls run side by side with the garbage collector, on arguments
// full of pointers, and each gets its own arguments, from several
// goroutines at once (the pooled holders too).
func TestDirectCallsUnderGC(t *testing.T) {
	r := shapesRegistry(t)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			default:
				runtime.GC()
			}
		}
	}()
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			for i := range 200 {
				name := fmt.Sprintf("g%d-%d", g, i)
				n := &Node{Name: name, Tags: []string{name}, Next: &Node{Name: "next"}}
				for _, c := range []struct {
					method string
					args   any
					want   string
				}{
					{"Z.CtxPtr", n, describe(n) + " deadline=false value=<nil>"},
					{"Z.Struct", *n, describe(n)}, // these two decode into the pooled holder
					{"Z.Slice", Words{name, "x"}, name + "+x2 true"},
				} {
					var got string
					if err := roundTripErr(r, codec.Gob, c.method, c.args, &got); err != nil {
						errs <- err
						return
					}
					if got != c.want {
						errs <- fmt.Errorf("%s: got %q, want %q", c.method, got, c.want)
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		require.NoError(t, <-errs)
	}
}

// roundTripErr is roundTrip for other goroutines than the test's.
func roundTripErr(r *Registry, c codec.Codec, method string, args, reply any) error {
	wire, err := AppendRequest(context.Background(), nil, protocol.TypeRequest, 7, c, method, args)
	if err != nil {
		return err
	}
	var req protocol.Frame
	if _, err := protocol.Parse(wire, 0, &req); err != nil {
		return err
	}
	out := r.Handle(context.Background(), &req, nil)
	var rep protocol.Frame
	if _, err := protocol.Parse(out, 0, &rep); err != nil {
		return err
	}
	return DecodeReply(&rep, reply)
}

// A direct call saves the two allocations of reflect.Value.Call: the slice
// of results and the error it boxes.
func TestDirectCallAllocs(t *testing.T) {
	req := request(t, context.Background(), codec.Raw, "Arith.Bytes", make([]byte, 64), nil)
	buf := make([]byte, 0, 512)
	allocs := func() float64 { // a new registry: directCalls is looked at when a method registers
		r := NewRegistry(nil)
		require.NoError(t, r.Register(new(Arith)))
		return testing.AllocsPerRun(200, func() { buf = r.Handle(context.Background(), req, buf[:0]) })
	}
	direct := allocs()
	directCalls = false
	defer func() { directCalls = true }()
	require.Equal(t, allocs()-2, direct)
}

// keeper keeps the arguments it is given, as a method may.
type keeper struct{ kept [][]byte }

func (k *keeper) Keep(a []byte, r *[]byte) error {
	k.kept = append(k.kept, a)
	*r = append(*r, 'k')
	return nil
}

// The value a method's arguments are decoded into is used again by the next
// call, zeroed: what a method keeps of its arguments stays its own, and no
// call sees the fields of the one before.
func TestArgsHolderReused(t *testing.T) {
	r := NewRegistry(nil)
	k := &keeper{}
	require.NoError(t, r.RegisterName("K", k))
	require.NoError(t, r.RegisterName("Z", shapes{}))
	for _, s := range []string{"first call", "second", "third call's bytes"} {
		var rep []byte
		require.NoError(t, roundTrip(t, r, context.Background(), codec.Raw, "K.Keep", []byte(s), &rep))
	}
	require.Equal(t, [][]byte{[]byte("first call"), []byte("second"), []byte("third call's bytes")}, k.kept)

	// A decode that fails half way leaves nothing for the next call.
	req := request(t, context.Background(), codec.Gob, "Z.Struct", Node{Name: "half", Tags: []string{"x", "y"}, Next: &Node{Name: "n"}}, nil)
	req.Body = req.Body[:len(req.Body)-3]
	rep := parse(t, r.Handle(context.Background(), req, nil))
	require.Contains(t, string(rep.Error), "decoding arguments")
	var got string
	require.NoError(t, roundTrip(t, r, context.Background(), codec.Gob, "Z.Struct", Node{}, &got))
	require.Equal(t, "[]>nil", got)

	for _, cd := range []codec.Codec{codec.Gob, codec.JSON} {
		require.NoError(t, roundTrip(t, r, context.Background(), cd, "Z.Struct", Node{Name: "a", Tags: []string{"x"}, Next: &Node{Name: "n"}}, &got))
		require.Equal(t, "a[x]>n[]>nil", got)
		require.NoError(t, roundTrip(t, r, context.Background(), cd, "Z.Struct", Node{Name: "b"}, &got))
		require.Equal(t, "b[]>nil", got, cd.Name())
	}
}

// An interceptor's copy of value arguments is its own; invoke runs the
// method once per call, and not at all once the interceptor has returned.
func TestInterceptorArgsAndInvoke(t *testing.T) {
	r := NewRegistry(nil)
	k := &keeper{}
	require.NoError(t, r.RegisterName("K", k))
	var late func(context.Context) error
	icpt := func(ctx context.Context, _ string, args, _ any, invoke func(context.Context) error) error {
		b := args.([]byte)
		b[0] = 'X' // the interceptor's copy of the slice header: the same bytes
		late = invoke
		if err := invoke(ctx); err != nil {
			return err
		}
		return invoke(ctx)
	}
	req := request(t, context.Background(), codec.Raw, "K.Keep", []byte("abc"), nil)
	rep := parse(t, r.HandleWith(context.Background(), req, nil, icpt))
	require.Empty(t, rep.Error)
	require.Equal(t, "kk", string(rep.Body), "invoked twice: the reply appended to twice")
	require.Equal(t, [][]byte{[]byte("Xbc"), []byte("Xbc")}, k.kept)

	err := late(context.Background())
	require.ErrorContains(t, err, "after the interceptor returned")
	require.Len(t, k.kept, 2, "a late invoke runs nothing")
}
