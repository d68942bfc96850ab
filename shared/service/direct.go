package service

import (
	"context"
	"reflect"
	"unsafe"
)

// A direct call runs a method without reflect.Value.Call, which costs a
// method of a few instructions about half a microsecond: it looks up the
// function's frame layout in a sync.Map, copies every argument into a frame
// and back, allocates the result slice and the error it holds, and its deep
// stack makes a worker goroutine's stack, shrunk by the last GC, grow again.
//
// Go cannot call a function whose type it learns at run time, except by
// reflection. What it can do is call a function through a func type of the
// same shape: Go's calling conventions (the register-based ABIInternal and
// the stack-based ABI0 alike) place an argument by its layout alone, so a
// *Args and an unsafe.Pointer, or a []int and a []byte, travel in the same
// registers and stack slots, and the garbage collector sees a pointer in
// either. A method is called directly when each of its inputs has one of the
// shapes below; any other method (a receiver struct with fields, arguments
// passed as a struct or a number) is called by reflection, as before.
//
//   - the receiver: a pointer, or a value of size zero and alignment 1
//     (Register(T{}) of an empty struct);
//   - the arguments: a pointer, a slice, a string or a value of size zero
//     and alignment 1;
//   - the reply: always a pointer (the rules ask for one);
//   - the ctx, when the method takes one, and the error it returns: the
//     exact types.
//
// TestDirectCallMatchesReflection calls every shape both ways.
type directCall func(rcvr, arg unsafe.Pointer, ctx context.Context, reply unsafe.Pointer) error

// shape is how an input travels, for the direct call.
type shape uint8

const (
	shapeOther  shape = iota // none of the below: call by reflection
	shapeZero                // a value of size zero: nothing travels
	shapeWord                // a pointer: one word
	shapeSlice               // a slice: pointer, length, capacity
	shapeString              // a string: pointer, length
)

func shapeOf(t reflect.Type) shape {
	switch {
	case t.Kind() == reflect.Pointer:
		return shapeWord
	case t.Kind() == reflect.Slice:
		return shapeSlice
	case t.Kind() == reflect.String:
		return shapeString
	case t.Size() == 0 && t.Align() == 1:
		// Alignment 1: a zero-size value aligned to 8 (a [0]int64 field)
		// moves the arguments after it on 32-bit stacks; struct{} moves
		// nothing.
		return shapeZero
	}
	return shapeOther
}

// directFor returns the direct call of fn, a method taking its receiver of
// type rcvr first (then a ctx when withCtx), then arguments of type arg and
// a reply pointer, and returning an error; nil when its inputs do not all
// have a shape the direct call knows.
func directFor(fn reflect.Value, rcvr, arg reflect.Type, withCtx bool) directCall {
	if !directCalls {
		return nil
	}
	switch r := shapeOf(rcvr); {
	case r == shapeWord:
		return directWithArg[unsafe.Pointer](fn, arg, withCtx)
	case r == shapeZero:
		return directWithArg[struct{}](fn, arg, withCtx)
	}
	return nil
}

func directWithArg[R any](fn reflect.Value, arg reflect.Type, withCtx bool) directCall {
	switch shapeOf(arg) {
	case shapeWord:
		return directOfPointer[R](fn, withCtx)
	case shapeSlice:
		return directOf[R, []byte](fn, withCtx)
	case shapeString:
		return directOf[R, string](fn, withCtx)
	case shapeZero:
		return directOf[R, struct{}](fn, withCtx)
	}
	return nil
}

// directOf returns fn called as a func(R, [context.Context,] A,
// unsafe.Pointer) error, where R and A have the shapes of fn's receiver and
// arguments. Its rcvr and arg point to the receiver's and the arguments'
// values.
func directOf[R, A any](fn reflect.Value, withCtx bool) directCall {
	if withCtx {
		f := reinterpret[func(R, context.Context, A, unsafe.Pointer) error](fn)
		return func(rcvr, arg unsafe.Pointer, ctx context.Context, reply unsafe.Pointer) error {
			return f(*(*R)(rcvr), ctx, *(*A)(arg), reply)
		}
	}
	f := reinterpret[func(R, A, unsafe.Pointer) error](fn)
	return func(rcvr, arg unsafe.Pointer, _ context.Context, reply unsafe.Pointer) error {
		return f(*(*R)(rcvr), *(*A)(arg), reply)
	}
}

// directOfPointer is directOf for a method whose arguments are a pointer:
// its arg is that pointer, not a pointer to it (taking the address of a
// local would make it escape through the indirect call).
func directOfPointer[R any](fn reflect.Value, withCtx bool) directCall {
	if withCtx {
		f := reinterpret[func(R, context.Context, unsafe.Pointer, unsafe.Pointer) error](fn)
		return func(rcvr, arg unsafe.Pointer, ctx context.Context, reply unsafe.Pointer) error {
			return f(*(*R)(rcvr), ctx, arg, reply)
		}
	}
	f := reinterpret[func(R, unsafe.Pointer, unsafe.Pointer) error](fn)
	return func(rcvr, arg unsafe.Pointer, _ context.Context, reply unsafe.Pointer) error {
		return f(*(*R)(rcvr), arg, reply)
	}
}

// reinterpret returns the func value fn as a value of the func type F: the
// same pointer to the same code, under another type of the same shape.
func reinterpret[F any](fn reflect.Value) F {
	p := reflect.New(fn.Type()) // a variable of fn's own type, holding fn
	p.Elem().Set(fn)
	return *(*F)(p.UnsafePointer())
}

// directCalls is cleared by tests, to run the same requests by reflection.
var directCalls = true
