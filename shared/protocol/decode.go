package protocol

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
)

// readChunk is how much ReadFrame allocates ahead of the bytes it has
// received, for a frame larger than the buffer it was given. A peer that
// announces 16 MiB and sends nothing gets 64 KiB of memory, not 16 MiB.
const readChunk = 64 << 10

// ReadFrame reads one frame from r into f, blocking until it is complete.
// The sections are read into buf, which is grown when it is too small, and
// the buffer is returned for the next call: f's sections alias it until
// then. A nil buf is fine; a new one is allocated.
//
// max is the largest frame accepted (DefaultMaxFrameSize when max <= 0). A
// larger frame is refused on its header, with ErrFrameTooLarge, before its
// sections are read or allocated.
//
// At a clean end of stream (no byte of a new frame read) ReadFrame returns
// io.EOF; a stream that ends inside a frame gives ErrTruncated. Any error
// other than io.EOF leaves r somewhere inside a frame: close the connection.
func ReadFrame(r *bufio.Reader, max int, f *Frame, buf []byte) ([]byte, error) {
	if cap(buf) < HeaderSize {
		buf = make([]byte, HeaderSize)
	}
	buf = buf[:HeaderSize]
	if _, err := io.ReadFull(r, buf); err != nil {
		return buf, truncated(err, "header")
	}
	l, err := parseHeader(buf, max, &f.Header)
	if err != nil {
		return buf, err
	}
	buf, err = readSections(r, buf, int(l.total()-HeaderSize))
	if err != nil {
		return buf, truncated(err, "sections")
	}
	f.split(buf, l)
	return buf, nil
}

// readSections reads n bytes into buf[:n]. When buf is too small and n is
// large, the buffer grows as the bytes arrive instead of all at once.
func readSections(r io.Reader, buf []byte, n int) ([]byte, error) {
	if n <= cap(buf) || n <= readChunk {
		buf = slices.Grow(buf[:0], n)[:n]
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	buf = buf[:0]
	for len(buf) < n {
		want := min(n-len(buf), max(len(buf), readChunk))
		buf = slices.Grow(buf, want)
		got, err := io.ReadFull(r, buf[len(buf):len(buf)+want])
		buf = buf[:len(buf)+got]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// truncated turns an unexpected end of stream inside a frame into
// ErrTruncated. A clean io.EOF before the first header byte stays io.EOF.
func truncated(err error, where string) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || (where != "header" && errors.Is(err, io.EOF)) {
		return fmt.Errorf("%w: stream ended inside the %s (%w)", ErrTruncated, where, io.ErrUnexpectedEOF)
	}
	return err
}

// FrameLen reports the size of the first frame in b, once b holds its
// header: it returns 0 and nil while b is shorter than HeaderSize. A header
// that is invalid, or announces more than max bytes, is an error, so a
// reader can refuse a frame before buffering it.
func FrameLen(b []byte, max int) (int, error) {
	if len(b) < HeaderSize {
		return 0, nil
	}
	var h Header
	l, err := parseHeader(b, max, &h)
	if err != nil {
		return 0, err
	}
	return int(l.total()), nil
}

// Parse decodes the first frame of b into f, for readers that never block:
// b holds whatever has arrived, which may be part of a frame or several
// frames. Parse returns the size of the decoded frame; the caller consumes
// that many bytes and calls again. When b does not yet hold a whole frame,
// Parse returns 0 and nil and leaves f alone: read more, keep b, call again.
//
// f's sections alias b. Parse never blocks, never allocates and never
// panics, whatever b holds; a bad header is an error (see the Err
// variables), and after one the stream cannot be resynchronised.
func Parse(b []byte, max int, f *Frame) (int, error) {
	if len(b) < HeaderSize {
		return 0, nil
	}
	var h Header
	l, err := parseHeader(b, max, &h)
	if err != nil {
		return 0, err
	}
	n := l.total() // at most max, so it fits an int
	if uint64(len(b)) < n {
		return 0, nil
	}
	f.Header = h
	f.split(b[HeaderSize:n], l)
	return int(n), nil
}
