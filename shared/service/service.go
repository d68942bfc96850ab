// Package service turns Go method calls into frames and back, the same way
// for every rpcsteps version: the registry of services and their dispatch
// on the server side, request encoding and reply decoding on the client side.
// A version adds only the transport around it.
//
// # Methods
//
// The rules are net/rpc's. A method is served when
//
//   - its receiver's type is exported, or the service is registered with
//     RegisterName;
//   - the method is exported;
//   - it has two arguments, both exported or builtin types;
//   - its second argument is a pointer (the reply);
//   - it returns one value, of type error;
//
// that is, it looks like
//
//	func (t *T) MethodName(args A, reply *R) error
//
// In addition a method may take a [context.Context] first:
//
//	func (t *T) MethodName(ctx context.Context, args A, reply *R) error
//
// Its ctx carries the caller's deadline (sent as the caller's remaining time)
// and ends with the server's base context. Methods that do not fit are
// skipped. A request names a method "Service.Method", split at the last dot,
// so a service name may itself contain dots.
//
// Methods whose receiver and arguments are pointers, slices, strings or
// values of size zero are called without reflection (see directCall in
// direct.go); the others through reflect.Value.Call, as net/rpc does.
//
// # Metadata and interceptors
//
// A request may carry metadata, key/value pairs for the call, ahead of its
// arguments ([AppendRequestMetadata]; the block is described in
// shared/protocol). [Registry.Handle] skips it. A server that uses it calls
// [Registry.HandleWith] with an [Interceptor], which runs around the method
// and may, for instance, put the pairs on the method's ctx.
package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/token"
	"log/slog"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"unsafe"
)

// ServerError is an error that happened on the far side of a call: the
// method's own error, or the server's failure to find, decode or run it. Its
// text is the method's error text. Every version's ServerError is this type.
type ServerError string

// Error returns the error text as the server sent it.
func (e ServerError) Error() string { return string(e) }

// ErrShutdown is returned by a client's calls once it is closed. Every
// version's ErrShutdown is this value.
var ErrShutdown = errors.New("rpc: client is shut down")

// ErrServerClosed is returned by a server's Serve after Shutdown or Close.
// Every version's ErrServerClosed is this value.
var ErrServerClosed = errors.New("rpc: server closed")

var (
	typeOfError   = reflect.TypeFor[error]()
	typeOfContext = reflect.TypeFor[context.Context]()
)

// method is one servable method of a service.
type method struct {
	fn        reflect.Value // the method as a function taking the receiver first
	withCtx   bool          // it takes a context.Context first
	argType   reflect.Type
	replyType reflect.Type // a pointer type
	// direct calls fn without reflection (nil: by reflection); see
	// directCall.
	direct directCall
	// args holds zeroed values of argType, when it is not a pointer, to
	// decode arguments into (unsafe.Pointer: a pointer in an interface
	// costs no allocation).
	args sync.Pool
}

// svc is one registered receiver.
type svc struct {
	name    string
	rcvr    reflect.Value
	methods map[string]*method
	// ptr is rcvr's pointer when rcvr is one: what a direct call passes as
	// the receiver (it reads nothing from here for a receiver of size zero).
	ptr unsafe.Pointer
}

// Registry holds services and runs their methods. The zero value is not
// usable; call NewRegistry. Its methods are safe for concurrent use, and
// registering while requests are served is safe.
type Registry struct {
	logger *slog.Logger

	mu       sync.Mutex                      // serialises registrations
	services atomic.Pointer[map[string]*svc] // copied on write; read without a lock
}

// NewRegistry returns an empty registry. The logger receives the panics of
// methods (at Error level); nil means none, and the registry is silent.
func NewRegistry(logger *slog.Logger) *Registry {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Registry{logger: logger}
	r.services.Store(&map[string]*svc{})
	return r
}

// Register publishes the methods of rcvr that fit the rules, under the name
// of rcvr's type. It returns an error when the type is not exported, when no
// method fits, or when the name is already taken.
func (r *Registry) Register(rcvr any) error {
	return r.register(rcvr, "", false)
}

// RegisterName is Register with the service name given. It may register a
// receiver of an unexported type.
func (r *Registry) RegisterName(name string, rcvr any) error {
	return r.register(rcvr, name, true)
}

func (r *Registry) register(rcvr any, name string, useName bool) error {
	if rcvr == nil {
		return errors.New("rpc.Register: nil receiver")
	}
	v := reflect.ValueOf(rcvr)
	if !useName {
		name = reflect.Indirect(v).Type().Name()
		if name == "" {
			return fmt.Errorf("rpc.Register: no service name for type %s", v.Type())
		}
		if !token.IsExported(name) {
			return fmt.Errorf("rpc.Register: type %s is not exported", name)
		}
	}
	if name == "" {
		return fmt.Errorf("rpc.Register: empty service name for type %s", v.Type())
	}
	s := &svc{name: name, rcvr: v, methods: suitableMethods(v.Type())}
	if v.Kind() == reflect.Pointer {
		s.ptr = v.UnsafePointer()
	}
	if len(s.methods) == 0 {
		if len(suitableMethods(reflect.PointerTo(v.Type()))) > 0 {
			return fmt.Errorf("rpc.Register: type %s has no exported methods of suitable type (hint: pass a pointer to value of that type)", name)
		}
		return fmt.Errorf("rpc.Register: type %s has no exported methods of suitable type", name)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	old := *r.services.Load()
	if _, dup := old[name]; dup {
		return fmt.Errorf("rpc: service already defined: %s", name)
	}
	next := make(map[string]*svc, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[name] = s
	r.services.Store(&next)
	return nil
}

// suitableMethods returns the methods of typ that fit the rules.
func suitableMethods(typ reflect.Type) map[string]*method {
	methods := make(map[string]*method)
	for i := range typ.NumMethod() {
		m := typ.Method(i)
		if !m.IsExported() {
			continue
		}
		mt := m.Type
		first := 1 // index of args in mt's inputs; the receiver is input 0
		if mt.NumIn() == 4 && mt.In(1) == typeOfContext {
			first = 2
		}
		if mt.NumIn() != first+2 {
			continue
		}
		argType, replyType := mt.In(first), mt.In(first+1)
		if !isExportedOrBuiltin(argType) || !isExportedOrBuiltin(replyType) {
			continue
		}
		if replyType.Kind() != reflect.Pointer {
			continue
		}
		if mt.NumOut() != 1 || mt.Out(0) != typeOfError {
			continue
		}
		mm := &method{fn: m.Func, withCtx: first == 2, argType: argType, replyType: replyType}
		mm.direct = directFor(m.Func, mt.In(0), argType, mm.withCtx)
		methods[m.Name] = mm
	}
	return methods
}

func isExportedOrBuiltin(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return token.IsExported(t.Name()) || t.PkgPath() == ""
}

// Methods returns the "Service.Method" names the registry serves, sorted.
func (r *Registry) Methods() []string {
	var names []string
	for _, s := range *r.services.Load() {
		for m := range s.methods {
			names = append(names, s.name+"."+m)
		}
	}
	sort.Strings(names)
	return names
}

// Has reports whether serviceMethod ("Service.Method") names a method the
// registry serves. It allocates nothing.
func (r *Registry) Has(serviceMethod []byte) bool {
	_, _, err := r.lookup(serviceMethod)
	return err == nil
}

// lookup finds the method a request names. Its errors are the reply texts.
func (r *Registry) lookup(serviceMethod []byte) (*svc, *method, error) {
	dot := bytes.LastIndexByte(serviceMethod, '.')
	if dot < 0 {
		return nil, nil, ServerError("rpc: service/method request ill-formed: " + string(serviceMethod))
	}
	s := (*r.services.Load())[string(serviceMethod[:dot])]
	if s == nil {
		return nil, nil, ServerError("rpc: can't find service " + string(serviceMethod))
	}
	m := s.methods[string(serviceMethod[dot+1:])]
	if m == nil {
		return nil, nil, ServerError("rpc: can't find method " + string(serviceMethod))
	}
	return s, m, nil
}
