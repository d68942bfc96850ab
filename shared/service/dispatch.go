package service

import (
	"context"
	"fmt"
	"reflect"
	"runtime/debug"
	"sync/atomic"
	"unsafe"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Handle runs the call that req asks for and appends the reply frame to dst,
// which it returns. req must be a TypeRequest or TypeOneway frame; for a
// one-way request nothing is appended.
//
// ctx is the server's base context: the method's ctx derives from it, with
// the caller's deadline added when the request carries one. A request
// carrying protocol.FlagMetadata has its metadata block skipped: the
// arguments are decoded from the bytes after it. Every failure (unknown
// service or method, unknown codec, malformed metadata, undecodable
// arguments, the method's error, a panic, an unencodable reply) becomes an
// error reply whose text a client returns as a ServerError. Handle never
// panics because of what req holds.
//
// Handle is HandleWith with no interceptor.
func (r *Registry) Handle(ctx context.Context, req *protocol.Frame, dst []byte) []byte {
	return r.HandleWith(ctx, req, dst, nil)
}

// Interceptor wraps the run of a method, like a gRPC unary server
// interceptor: it is called with the method's ctx, the "Service.Method"
// name, the decoded arguments (for a method taking A, a copy of the A it
// will receive; for one taking *A, the pointer itself), the reply pointer,
// and invoke, which runs the method with the ctx it is given (a method that
// takes no ctx ignores it) and returns the method's error.
//
// An interceptor may add values to the ctx it passes to invoke, look at or
// change the arguments and the reply, or not call invoke at all: the error
// it returns is the call's outcome (a nil error sends the reply as it is, an
// error is sent as its text). A panic in the method is recovered by invoke
// and returned as a ServerError, so an interceptor sees every outcome as an
// error. invoke must be called, if at all, before the interceptor returns
// (once it has returned, invoke runs nothing and returns an error: the
// arguments' holder is another request's by then); each call runs the
// method once more.
type Interceptor func(ctx context.Context, serviceMethod string, args, reply any, invoke func(ctx context.Context) error) error

// HandleWith is Handle with icpt around the method (nil: none, and
// HandleWith is Handle). The failures that happen before the method can run
// (unknown service or method, unknown codec, malformed metadata,
// undecodable arguments) are answered before icpt is called, and icpt does
// not see them; the reply is encoded after icpt returns. The ctx icpt gets
// carries the caller's deadline, whether or not the method takes a ctx. A
// panic in icpt is recovered, logged and answered with a ServerError, as a
// panic in a method. A one-way request runs the same way, with no reply.
//
// v4 calls it with an interceptor that puts the request's metadata on the
// ctx; v1 to v3 call Handle.
func (r *Registry) HandleWith(ctx context.Context, req *protocol.Frame, dst []byte, icpt Interceptor) []byte {
	reply, err := r.call(ctx, req, icpt)
	if req.Type == protocol.TypeOneway {
		if err != nil {
			r.logger.Debug("rpc: one-way call failed", "method", string(req.Method), "err", err)
		}
		return dst
	}
	h := protocol.Header{Type: protocol.TypeReply, Codec: req.Codec, Seq: req.Seq}
	if err == nil {
		start := len(dst)
		buf, err2 := protocol.BeginFrame(dst, &h, "", "")
		if err2 == nil {
			buf, err2 = r.marshal(req.Codec, buf, reply.Interface())
		}
		if err2 == nil {
			err2 = protocol.FinishFrame(buf[start:])
		}
		if err2 == nil {
			return buf
		}
		err = ServerError(fmt.Sprintf("rpc: encoding reply of %s: %v", req.Method, err2))
		dst = buf[:start]
	}
	return AppendError(dst, &h, err.Error())
}

// AppendError appends a reply frame carrying the error text msg to dst.
// h gives the Seq and Codec; its Type and Flags are set here.
func AppendError(dst []byte, h *protocol.Header, msg string) []byte {
	eh := *h
	eh.Type, eh.Flags, eh.Budget = protocol.TypeReply, protocol.FlagError, 0
	buf, err := protocol.AppendFrame(dst, &eh, "", msg, nil)
	if err != nil { // a message of 4 GiB: send a short one instead
		buf, _ = protocol.AppendFrame(dst, &eh, "", "rpc: error text too long", nil)
	}
	return buf
}

func (r *Registry) marshal(id uint8, dst []byte, v any) ([]byte, error) {
	c, err := codec.Lookup(id)
	if err != nil {
		return dst, err
	}
	return c.Marshal(dst, v)
}

// call decodes the arguments, runs the method (through icpt, unless it is
// nil) and returns its reply value.
func (r *Registry) call(ctx context.Context, req *protocol.Frame, icpt Interceptor) (reply reflect.Value, err error) {
	s, m, err := r.lookup(req.Method)
	if err != nil {
		return reflect.Value{}, err
	}
	c, err := codec.Lookup(req.Codec)
	if err != nil {
		return reflect.Value{}, ServerError(fmt.Sprintf("rpc: %s: %v", req.Method, err))
	}
	body := req.Body
	if req.Flags&protocol.FlagMetadata != 0 {
		if _, body, err = protocol.SplitMetadata(body, protocol.DefaultMaxMetadataSize); err != nil {
			return reflect.Value{}, ServerError(fmt.Sprintf("rpc: decoding metadata of %s: %v", req.Method, err))
		}
	}

	// Arguments: decode into a new value; a method taking A (not *A) gets
	// the value itself, a copy of the zeroed holder it was decoded into,
	// which nobody else sees (an interceptor gets a copy too) and which is
	// used again.
	var argv reflect.Value
	if m.argType.Kind() == reflect.Pointer {
		argv = reflect.New(m.argType.Elem())
	} else {
		holder, _ := m.args.Get().(unsafe.Pointer)
		if holder == nil {
			argv = reflect.New(m.argType)
			holder = argv.UnsafePointer()
		} else {
			argv = reflect.NewAt(m.argType, holder)
		}
		held := argv.Elem()
		defer func() {
			held.SetZero() // what it held is the method's now, not the next call's
			m.args.Put(holder)
		}()
	}
	if err := c.Unmarshal(body, argv.Interface()); err != nil {
		return reflect.Value{}, ServerError(fmt.Sprintf("rpc: decoding arguments of %s: %v", req.Method, err))
	}
	if m.argType.Kind() != reflect.Pointer {
		argv = argv.Elem()
	}

	reply = reflect.New(m.replyType.Elem())
	switch m.replyType.Elem().Kind() { // as net/rpc: a map or slice reply starts empty, not nil
	case reflect.Map:
		reply.Elem().Set(reflect.MakeMap(m.replyType.Elem()))
	case reflect.Slice:
		// Every slice has a slice's shape: an empty []byte is an empty
		// slice of any type, stored without reflect's Set.
		*(*[]byte)(reply.UnsafePointer()) = []byte{}
	}

	// The caller's deadline, for a method that takes a ctx or an
	// interceptor (without either, nobody would see it).
	if req.Flags&protocol.FlagDeadline != 0 && (m.withCtx || icpt != nil) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, req.Budget)
		defer cancel()
	}
	if icpt == nil {
		err = r.invoke(ctx, s, m, req.Method, argv, reply)
	} else {
		err = r.intercept(ctx, s, m, req.Method, argv, reply, icpt)
	}
	if err != nil {
		return reflect.Value{}, err
	}
	return reply, nil
}

// intercept runs the method through icpt, turning icpt's error and any
// panic of icpt into a ServerError.
func (r *Registry) intercept(ctx context.Context, s *svc, m *method, name []byte, argv, reply reflect.Value, icpt Interceptor) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.logger.Error("rpc: interceptor panicked", "method", string(name), "panic", p, "stack", string(debug.Stack()))
			err = ServerError(fmt.Sprintf("rpc: interceptor of %s panicked: %v", name, p))
		}
	}()
	// The arguments live in a holder the next request reuses (call), and
	// name in the request's buffer: an invoke kept past the return fails.
	var returned atomic.Bool
	defer returned.Store(true)
	invoke := func(ctx context.Context) error {
		if returned.Load() {
			return ServerError("rpc: an interceptor's invoke was called after the interceptor returned")
		}
		if ctx == nil {
			return ServerError(fmt.Sprintf("rpc: interceptor of %s invoked it with a nil context", name))
		}
		return r.invoke(ctx, s, m, name, argv, reply)
	}
	if err := icpt(ctx, string(name), argv.Interface(), reply.Interface(), invoke); err != nil {
		return ServerError(err.Error())
	}
	return nil
}

// invoke calls the method, with ctx when it takes one, turning its error and
// any panic into a ServerError.
func (r *Registry) invoke(ctx context.Context, s *svc, m *method, name []byte, argv, reply reflect.Value) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.logger.Error("rpc: method panicked", "method", string(name), "panic", p, "stack", string(debug.Stack()))
			err = ServerError(fmt.Sprintf("rpc: method %s panicked: %v", name, p))
		}
	}()
	if m.direct != nil {
		var arg unsafe.Pointer // what directCall takes: the pointer, or a pointer to the value
		if argv.Kind() == reflect.Pointer {
			arg = argv.UnsafePointer()
		} else {
			arg = argv.Addr().UnsafePointer() // argv is addressable: the Elem of call's reflect.New
		}
		if err := m.direct(unsafe.Pointer(&s.ptr), arg, ctx, reply.UnsafePointer()); err != nil {
			return ServerError(err.Error())
		}
		return nil
	}
	var args [4]reflect.Value // on the stack: Call does not keep it
	in := append(args[:0], s.rcvr)
	if m.withCtx {
		in = append(in, reflect.ValueOf(ctx))
	}
	in = append(in, argv, reply)
	out := m.fn.Call(in)
	if e := out[0].Interface(); e != nil {
		return ServerError(e.(error).Error())
	}
	return nil
}
