package service

import (
	"context"
	"fmt"
	"reflect"
	"runtime/debug"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Handle runs the call that req asks for and appends the reply frame to dst,
// which it returns. req must be a TypeRequest or TypeOneway frame; for a
// one-way request nothing is appended.
//
// ctx is the server's base context: the method's ctx derives from it, with
// the caller's deadline added when the request carries one. Every failure
// (unknown service or method, unknown codec, undecodable arguments, the
// method's error, a panic, an unencodable reply) becomes an error reply
// whose text a client returns as a ServerError. Handle never panics because
// of what req holds.
func (r *Registry) Handle(ctx context.Context, req *protocol.Frame, dst []byte) []byte {
	reply, err := r.call(ctx, req)
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

// call decodes the arguments, runs the method and returns its reply value.
func (r *Registry) call(ctx context.Context, req *protocol.Frame) (reply reflect.Value, err error) {
	s, m, err := r.lookup(req.Method)
	if err != nil {
		return reflect.Value{}, err
	}
	c, err := codec.Lookup(req.Codec)
	if err != nil {
		return reflect.Value{}, ServerError(fmt.Sprintf("rpc: %s: %v", req.Method, err))
	}

	// Arguments: decode into a new value; a method taking A (not *A) gets
	// the value itself.
	var argv reflect.Value
	if m.argType.Kind() == reflect.Pointer {
		argv = reflect.New(m.argType.Elem())
	} else {
		argv = reflect.New(m.argType)
	}
	if err := c.Unmarshal(req.Body, argv.Interface()); err != nil {
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
		reply.Elem().Set(reflect.MakeSlice(m.replyType.Elem(), 0, 0))
	}

	var in []reflect.Value
	if m.withCtx {
		if req.Flags&protocol.FlagDeadline != 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, req.Budget)
			defer cancel()
		}
		in = []reflect.Value{s.rcvr, reflect.ValueOf(ctx), argv, reply}
	} else {
		in = []reflect.Value{s.rcvr, argv, reply}
	}
	if err := r.invoke(m, req.Method, in); err != nil {
		return reflect.Value{}, err
	}
	return reply, nil
}

// invoke calls the method, turning its error and any panic into a
// ServerError.
func (r *Registry) invoke(m *method, name []byte, in []reflect.Value) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.logger.Error("rpc: method panicked", "method", string(name), "panic", p, "stack", string(debug.Stack()))
			err = ServerError(fmt.Sprintf("rpc: method %s panicked: %v", name, p))
		}
	}()
	out := m.fn.Call(in)
	if e := out[0].Interface(); e != nil {
		return ServerError(e.(error).Error())
	}
	return nil
}
