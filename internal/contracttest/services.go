package contracttest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The services every test server registers, under their type names. Their
// types are exported because Register requires it; the channels in their
// fields let a test see what a method saw, and hold a method where it
// wants it.

// Args are the arguments of Arith's methods.
type Args struct{ A, B int }

// Quotient is the reply of Arith.Div.
type Quotient struct{ Quo, Rem int }

// Arith does arithmetic: methods taking a value, a pointer, a ctx first, and
// one that fails.
type Arith struct{}

// Add takes its arguments by value.
func (*Arith) Add(args Args, reply *int) error {
	*reply = args.A + args.B
	return nil
}

// Mul takes its arguments by pointer.
func (*Arith) Mul(args *Args, reply *int) error {
	*reply = args.A * args.B
	return nil
}

// AddCtx takes a ctx first.
func (*Arith) AddCtx(ctx context.Context, args Args, reply *int) error {
	if ctx == nil {
		return errors.New("nil ctx")
	}
	*reply = args.A + args.B
	return nil
}

// Div replies with a struct, or fails with "divide by zero".
func (*Arith) Div(args Args, reply *Quotient) error {
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	*reply = Quotient{args.A / args.B, args.A % args.B}
	return nil
}

// Fail returns an error whose text is msg.
func (*Arith) Fail(msg string, reply *int) error {
	return errors.New(msg)
}

// Echo moves bytes: the service of the Raw codec and of the frame limits.
type Echo struct{}

// Echo replies with its arguments.
func (Echo) Echo(args []byte, reply *[]byte) error {
	*reply = append((*reply)[:0], args...)
	return nil
}

// Make replies with n bytes.
func (Echo) Make(n int, reply *[]byte) error {
	*reply = make([]byte, n)
	for i := range *reply {
		(*reply)[i] = byte(i)
	}
	return nil
}

// DeadlineInfo is what Blocker.Deadline saw of its ctx.
type DeadlineInfo struct {
	Has  bool
	Left time.Duration
}

// Blocker holds calls in the server until the test lets them go.
type Blocker struct {
	Entered  chan string   // receives a call's tag when it starts
	Returned chan string   // receives Hold's tag once its reply is set
	CtxErr   chan error    // receives Wait's ctx.Err() when its ctx ends
	release  chan struct{} // closed by Release
	once     sync.Once
}

func newBlocker() *Blocker {
	return &Blocker{
		Entered:  make(chan string, 64),
		Returned: make(chan string, 64),
		CtxErr:   make(chan error, 64),
		release:  make(chan struct{}),
	}
}

// Release lets every Hold and Wait return, now and later. It may be called
// more than once.
func (b *Blocker) Release() { b.once.Do(func() { close(b.release) }) }

// Hold ignores its ctx: it returns once released, setting its reply to
// "held:" + tag.
func (b *Blocker) Hold(tag string, reply *string) error {
	signal(b.Entered, tag)
	<-b.release
	*reply = "held:" + tag
	signal(b.Returned, tag)
	return nil
}

// Wait returns when released (reply "released:" + tag) or when its ctx
// ends (the ctx's error, also sent on CtxErr).
func (b *Blocker) Wait(ctx context.Context, tag string, reply *string) error {
	signal(b.Entered, tag)
	select {
	case <-b.release:
		*reply = "released:" + tag
		return nil
	case <-ctx.Done():
		signal(b.CtxErr, ctx.Err())
		return ctx.Err()
	}
}

// Deadline reports the deadline of its ctx.
func (b *Blocker) Deadline(ctx context.Context, _ int, reply *DeadlineInfo) error {
	d, ok := ctx.Deadline()
	*reply = DeadlineInfo{Has: ok}
	if ok {
		reply.Left = time.Until(d)
	}
	return nil
}

// Panicker panics.
type Panicker struct{}

// PanicText is the start of the value Panicker.Boom panics with.
const PanicText = "contracttest: deliberate panic"

// Boom panics with PanicText and msg.
func (Panicker) Boom(msg string, reply *string) error {
	panic(fmt.Sprintf("%s (%s)", PanicText, msg))
}

// Recorder records the messages it is sent: the service of Notify.
type Recorder struct {
	Got chan string
}

// Record sends msg on Got.
func (r *Recorder) Record(msg string, reply *bool) error {
	signal(r.Got, msg)
	*reply = true
	return nil
}

// signal sends v on ch unless ch is full: a method must never block on a
// test that stopped listening.
func signal[T any](ch chan T, v T) {
	select {
	case ch <- v:
	default:
	}
}

// Registration fodder.

// NoMethods has no methods at all.
type NoMethods struct{}

// BadMethods has only methods that do not fit the rules.
type BadMethods struct{}

// NoReplyPointer has a reply that is not a pointer.
func (BadMethods) NoReplyPointer(args int, reply int) error { return nil }

// NoError returns no error.
func (BadMethods) NoError(args int, reply *int) {}

// OneArg has one argument.
func (BadMethods) OneArg(args int) error { return nil }

// hidden is unexported: it can be registered only through RegisterName.
type hidden struct{}

// Twice doubles n.
func (hidden) Twice(n int, reply *int) error {
	*reply = 2 * n
	return nil
}

// services are the receivers of one test server.
type services struct {
	arith    *Arith
	echo     Echo
	blocker  *Blocker
	panicker Panicker
	recorder *Recorder
}

func newServices() *services {
	return &services{
		arith:    &Arith{},
		blocker:  newBlocker(),
		recorder: &Recorder{Got: make(chan string, 64)},
	}
}

func (s *services) register(srv Server) error {
	for _, r := range []any{s.arith, s.echo, s.blocker, s.panicker, s.recorder} {
		if err := srv.Register(r); err != nil {
			return err
		}
	}
	return nil
}
