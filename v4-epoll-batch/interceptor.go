package epollbatch

import (
	"context"
	"fmt"
	"runtime/debug"
)

// Interceptors wrap calls on both sides, in gRPC's unary shape adapted to
// this API: an interceptor sees the ctx, the "Service.Method" called, the
// arguments and the reply, and calls invoke to go on (the next
// interceptor, and at the end the method or the call itself). It may
// change the ctx it passes on, look at the reply after invoke returns,
// or return an error without calling invoke at all. Logging, metrics,
// tracing, authentication and rate limits live here, outside the methods.

// A ServerInterceptor wraps the methods a server runs. ctx is the
// method's: it carries the caller's deadline and metadata
// (FromIncomingContext). args is the value the method receives, reply the
// pointer it fills; invoke runs the method with the ctx given and returns
// its error. The error an interceptor returns is the call's: the caller
// gets its text as a ServerError. A panic in an interceptor is handled as
// a panic in a method: logged (WithLogger), and a ServerError for the
// caller. A request for an unknown method, or whose arguments do not
// decode, is answered before any interceptor runs.
type ServerInterceptor func(ctx context.Context, serviceMethod string, args, reply any, invoke func(ctx context.Context) error) error

// A ClientInterceptor wraps a client's calls: Call, Go and Notify (whose
// reply is nil). invoke sends the request with the ctx given and waits
// for the outcome; the error the interceptor returns is the call's. For
// Go, the interceptors run on a goroutine of the call's own, so that Go
// still never blocks. A panic in an interceptor fails the call with an
// error that says so, logged (WithLogger).
type ClientInterceptor func(ctx context.Context, serviceMethod string, args, reply any, invoke func(ctx context.Context) error) error

// WithServerInterceptors adds interceptors around every method the server
// runs. The first given is the outermost: it runs first and sees the
// outcome last. Several of these options add up, in order.
func WithServerInterceptors(icpts ...ServerInterceptor) ServerOption {
	return serverFunc(func(o *serverOptions) { o.interceptors = append(o.interceptors, icpts...) })
}

// WithClientInterceptors adds interceptors around every call of the
// client, the first given outermost. Several of these options add up,
// in order.
func WithClientInterceptors(icpts ...ClientInterceptor) ClientOption {
	return clientFunc(func(o *clientOptions) { o.interceptors = append(o.interceptors, icpts...) })
}

// chain makes one interceptor of several, the first outermost; nil for
// none.
func chain[I ~func(context.Context, string, any, any, func(context.Context) error) error](icpts []I) I {
	switch len(icpts) {
	case 0:
		return nil
	case 1:
		return icpts[0]
	}
	return func(ctx context.Context, serviceMethod string, args, reply any, invoke func(context.Context) error) error {
		var next func(i int) func(context.Context) error
		next = func(i int) func(context.Context) error {
			if i == len(icpts) {
				return invoke
			}
			return func(ctx context.Context) error { return icpts[i](ctx, serviceMethod, args, reply, next(i+1)) }
		}
		return next(0)(ctx)
	}
}

// intercept runs a client call through the client's interceptors,
// turning a panic in one of them into the call's error.
func (c *Client) intercept(ctx context.Context, serviceMethod string, args, reply any, invoke func(context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			c.opts.logger.Error("epollbatch: client interceptor panicked", "method", serviceMethod, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("epollbatch: call %s: client interceptor panicked: %v", serviceMethod, p)
		}
	}()
	return c.opts.intercept(ctx, serviceMethod, args, reply, invoke)
}
