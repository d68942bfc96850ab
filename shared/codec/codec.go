// Package codec turns the arguments and replies of a call into bytes and
// back. Every frame names its codec by a one-byte wire ID, so that a server
// answers each request in the codec the request used.
//
// Three codecs are built in, as package-level values: [Gob] (the default of
// every rpcsteps client, as in net/rpc), [JSON], and [Raw], which passes
// []byte through untouched. Others can be added with [Register].
package codec

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// A Codec encodes and decodes the bodies of frames. Implementations must be
// safe for concurrent use and keep no state between messages: any message
// can be decoded alone.
type Codec interface {
	// Name is a short lower-case name, e.g. "gob".
	Name() string
	// ID is the codec's wire ID, carried in every frame header. 0 is never
	// a valid ID.
	ID() uint8
	// Marshal appends the encoding of v to dst and returns the extended
	// buffer. On error the returned buffer must be ignored.
	Marshal(dst []byte, v any) ([]byte, error)
	// Unmarshal decodes data into v, which is usually a pointer. It must not
	// keep data, which is reused after it returns, nor v, into which a later
	// call may decode (the server reuses the value it decodes arguments
	// into).
	Unmarshal(data []byte, v any) error
}

// The wire IDs of the built-in codecs. IDs up to 15 are reserved for
// rpcsteps; codecs of your own take an ID from 16 on.
const (
	RawID  uint8 = 1
	GobID  uint8 = 2
	JSONID uint8 = 3
)

// ErrUnknownCodec is returned (wrapped) by Lookup for an ID that no codec
// has, e.g. when a frame comes from a peer with codecs this side lacks.
var ErrUnknownCodec = errors.New("codec: unknown codec")

// ErrUnsupportedType is returned (wrapped) when a codec cannot encode or
// decode a value of the type it was given.
var ErrUnsupportedType = errors.New("codec: unsupported type")

// builtins is the table of the built-in codecs, indexed by wire ID.
var builtins = [256]Codec{RawID: Raw, GobID: Gob, JSONID: JSON}

// registered holds the table once Register has added to it. Lookups are on
// every frame's path, so they read an immutable table through an atomic
// pointer; Register copies the table under registerMu and swaps it.
var (
	registerMu sync.Mutex
	registered atomic.Pointer[[256]Codec]
)

func table() *[256]Codec {
	if t := registered.Load(); t != nil {
		return t
	}
	return &builtins
}

// Lookup returns the codec whose wire ID is id.
func Lookup(id uint8) (Codec, error) {
	if c := table()[id]; c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("%w: wire ID %d", ErrUnknownCodec, id)
}

// Register makes c known to Lookup, on both the client and the server side
// of this process. It fails when c's ID is 0, reserved, or taken.
func Register(c Codec) error {
	id := c.ID()
	if id < 16 {
		return fmt.Errorf("codec: register %q: wire IDs 0 to 15 are reserved, got %d", c.Name(), id)
	}
	registerMu.Lock()
	defer registerMu.Unlock()
	t := table()
	if old := t[id]; old != nil {
		return fmt.Errorf("codec: register %q: wire ID %d is taken by %q", c.Name(), id, old.Name())
	}
	next := *t
	next[id] = c
	registered.Store(&next)
	return nil
}

// appendWriter is an io.Writer that appends to a byte slice, so that
// encoders writing to a stream can append to a caller's buffer.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
