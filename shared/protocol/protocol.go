// Package protocol is the one wire format of every rpcsteps version.
//
// A frame is a fixed 28-byte big-endian header followed by three sections:
// the service method ("Service.Method"), the error text (replies only) and
// the body (arguments or reply, encoded by the codec the header names).
//
//	 0      2   3   4   5   6       8               16      20      24      28
//	+-------+---+---+---+---+-------+---------------+-------+-------+-------+
//	| magic |ver|typ|cdc|flg| mlen  |      seq      |budget | elen  | blen  |
//	+-------+---+---+---+---+-------+---------------+-------+-------+-------+
//	| service method (mlen) | error text (elen) | body (blen)              |
//	+-----------------------------------------------------------------------+
//
// A request carrying [FlagMetadata] has an optional section at the start of
// its body: the caller's metadata, string key/value pairs like gRPC's, in a
// length-prefixed block ahead of the codec's bytes ([AppendMetadata],
// [SplitMetadata], [RangeMetadata]). Frames without the flag are unchanged.
//
// docs/protocol.md draws every field and says which version first needs it.
//
// Frames are encoded by appending to a caller's buffer ([AppendFrame], or
// [BeginFrame] and [FinishFrame] when the body is appended in place by a
// codec). They are decoded in one of two ways: [ReadFrame] blocks on a
// [bufio.Reader] (v1 to v3), and [Parse] looks at a byte slice that may hold
// part of a frame or several frames (the non-blocking readers of v4).
//
// Both decoders check the header, including the announced size against a
// maximum frame size, before anything is allocated for the sections.
package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"
)

// HeaderSize is the size in bytes of the fixed frame header.
const HeaderSize = 28

// Magic opens every frame: the bytes 'R' 'S' (rpcsteps).
const Magic uint16 = 0x5253

// Version is the protocol version this package writes and accepts.
const Version uint8 = 1

// DefaultMaxFrameSize is the largest frame, header included, that a side
// accepts when it was given no other limit: 16 MiB.
const DefaultMaxFrameSize = 16 << 20

// MaxMethodLen is the longest service method a frame can carry (its length
// field is 16 bits wide).
const MaxMethodLen = math.MaxUint16

// MaxBudget is the longest time budget a header can carry (a 32-bit count of
// milliseconds, about 49.7 days). Longer budgets are sent as MaxBudget.
const MaxBudget = math.MaxUint32 * time.Millisecond

// Type is the kind of a frame.
type Type uint8

// The frame types.
const (
	TypeRequest Type = 1 // a call that expects a reply with the same Seq
	TypeReply   Type = 2 // the answer to the request with the same Seq
	TypeOneway  Type = 3 // a call that expects no reply (Client.Notify)
	TypePing    Type = 4 // a liveness probe; the peer answers TypePong with the same Seq
	TypePong    Type = 5 // the answer to a TypePing
)

// String returns the name of the type, e.g. "request".
func (t Type) String() string {
	switch t {
	case TypeRequest:
		return "request"
	case TypeReply:
		return "reply"
	case TypeOneway:
		return "oneway"
	case TypePing:
		return "ping"
	case TypePong:
		return "pong"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Flags are bits that qualify a frame.
type Flags uint8

// The flag bits. Undefined bits are ignored by readers and must be zero when
// written.
const (
	// FlagError marks a reply whose error section holds the method's error
	// text; its body is empty.
	FlagError Flags = 1 << 0
	// FlagDeadline marks a request whose caller has a deadline: Budget is the
	// time the caller had left when it sent the frame. Without this flag the
	// caller has no deadline and Budget is zero.
	FlagDeadline Flags = 1 << 1
	// FlagMetadata marks a request whose body section begins with a
	// metadata block (see [AppendMetadata] and [SplitMetadata]): the
	// caller's per-call key/value pairs, followed by the codec's bytes.
	FlagMetadata Flags = 1 << 2
)

// The errors a decoder returns. Each is a sentinel for errors.Is; the
// returned errors wrap them with the offending values.
var (
	// ErrBadMagic: the bytes do not start with Magic; they are not an
	// rpcsteps frame (or the stream lost its framing).
	ErrBadMagic = errors.New("protocol: bad magic")
	// ErrUnsupportedVersion: the frame was written by another protocol version.
	ErrUnsupportedVersion = errors.New("protocol: unsupported version")
	// ErrUnknownType: the frame type is none of the Type constants.
	ErrUnknownType = errors.New("protocol: unknown message type")
	// ErrFrameTooLarge: the header announces a frame larger than the limit.
	// Nothing was allocated for it; the connection cannot be resynchronised
	// and should be closed.
	ErrFrameTooLarge = errors.New("protocol: frame too large")
	// ErrTruncated: the stream ended inside a frame.
	ErrTruncated = errors.New("protocol: truncated frame")
)

// Header is the fixed part of a frame. The section lengths are not in it:
// encoders compute them from the sections and decoders expose the sections.
type Header struct {
	Type  Type
	Codec uint8 // the wire ID of the codec of the body (see shared/codec)
	Flags Flags
	Seq   uint64 // matches a reply to its request; chosen by the caller
	// Budget is the caller's remaining time when it sent a request carrying
	// FlagDeadline, in whole milliseconds (rounded up, at most MaxBudget).
	Budget time.Duration
}

// Frame is a decoded frame. Its sections alias the buffer it was decoded
// from: they are valid until that buffer is reused.
type Frame struct {
	Header
	Method []byte // "Service.Method"; empty in replies
	Error  []byte // the error text of a reply carrying FlagError
	Body   []byte // the encoded arguments or reply
}

// Size returns the encoded size of f, header included.
func (f *Frame) Size() int {
	return HeaderSize + len(f.Method) + len(f.Error) + len(f.Body)
}

// BudgetUntil returns the Budget and Flags to send for a caller whose
// deadline is d (ok false: no deadline), seen at time now. A budget is
// rounded up to the next millisecond, so that the callee never gives up
// before the caller; a deadline already past gives a zero budget.
func BudgetUntil(d time.Time, ok bool, now time.Time) (time.Duration, Flags) {
	if !ok {
		return 0, 0
	}
	left := d.Sub(now)
	switch {
	case left <= 0:
		return 0, FlagDeadline
	case left >= MaxBudget:
		return MaxBudget, FlagDeadline
	}
	ms := (left + time.Millisecond - 1) / time.Millisecond
	return ms * time.Millisecond, FlagDeadline
}

// limit returns max, or DefaultMaxFrameSize when max is not positive.
func limit(max int) uint64 {
	if max <= 0 {
		return DefaultMaxFrameSize
	}
	return uint64(max)
}

// putHeader writes h and the section lengths into b[:HeaderSize].
func putHeader(b []byte, h *Header, mlen, elen, blen int) {
	_ = b[HeaderSize-1] // one bounds check for the writes below
	binary.BigEndian.PutUint16(b[0:], Magic)
	b[2] = Version
	b[3] = byte(h.Type)
	b[4] = h.Codec
	b[5] = byte(h.Flags)
	binary.BigEndian.PutUint16(b[6:], uint16(mlen))
	binary.BigEndian.PutUint64(b[8:], h.Seq)
	binary.BigEndian.PutUint32(b[16:], budgetMillis(h.Budget))
	binary.BigEndian.PutUint32(b[20:], uint32(elen))
	binary.BigEndian.PutUint32(b[24:], uint32(blen))
}

func budgetMillis(d time.Duration) uint32 {
	switch {
	case d <= 0:
		return 0
	case d >= MaxBudget:
		return math.MaxUint32
	}
	return uint32((d + time.Millisecond - 1) / time.Millisecond)
}

// sectionLens is the part of a decoded header that is not in Header.
type sectionLens struct {
	method, errText, body uint32
}

func (l sectionLens) total() uint64 {
	return HeaderSize + uint64(l.method) + uint64(l.errText) + uint64(l.body)
}

// parseHeader checks and decodes b[:HeaderSize]. The checks run in wire
// order, so that garbage is reported as a bad magic rather than as a frame
// too large.
func parseHeader(b []byte, max int, h *Header) (sectionLens, error) {
	_ = b[HeaderSize-1]
	if m := binary.BigEndian.Uint16(b[0:]); m != Magic {
		return sectionLens{}, fmt.Errorf("%w: got %#04x, want %#04x", ErrBadMagic, m, Magic)
	}
	if v := b[2]; v != Version {
		return sectionLens{}, fmt.Errorf("%w: %d (this side speaks %d)", ErrUnsupportedVersion, v, Version)
	}
	t := Type(b[3])
	if t < TypeRequest || t > TypePong {
		return sectionLens{}, fmt.Errorf("%w: %d", ErrUnknownType, uint8(t))
	}
	l := sectionLens{
		method:  uint32(binary.BigEndian.Uint16(b[6:])),
		errText: binary.BigEndian.Uint32(b[20:]),
		body:    binary.BigEndian.Uint32(b[24:]),
	}
	if n, lim := l.total(), limit(max); n > lim {
		return sectionLens{}, fmt.Errorf("%w: %d bytes announced, limit %d", ErrFrameTooLarge, n, lim)
	}
	*h = Header{
		Type:   t,
		Codec:  b[4],
		Flags:  Flags(b[5]),
		Seq:    binary.BigEndian.Uint64(b[8:]),
		Budget: time.Duration(binary.BigEndian.Uint32(b[16:])) * time.Millisecond,
	}
	return l, nil
}

// split points f's sections into p, which holds exactly the sections.
func (f *Frame) split(p []byte, l sectionLens) {
	m, e := int(l.method), int(l.method)+int(l.errText)
	// Full slice expressions: appending to one section must never overwrite
	// the next one.
	f.Method = p[:m:m]
	f.Error = p[m:e:e]
	f.Body = p[e:len(p):len(p)]
}
