package protocol

import (
	"encoding/binary"
	"fmt"
	"math"
)

// AppendFrame appends the frame made of h and the three sections to dst and
// returns the extended buffer. It allocates only when dst lacks room.
//
// It fails, appending nothing, when a section is longer than its length
// field can say (MaxMethodLen for the method, 4 GiB for the others).
func AppendFrame(dst []byte, h *Header, method, errText string, body []byte) ([]byte, error) {
	if uint64(len(body)) > math.MaxUint32 { // uint64: on 32-bit systems an int cannot hold the limit
		return dst, fmt.Errorf("%w: body of %d bytes", ErrFrameTooLarge, len(body))
	}
	buf, err := BeginFrame(dst, h, method, errText)
	if err != nil {
		return dst, err
	}
	buf = append(buf, body...)
	binary.BigEndian.PutUint32(buf[len(dst)+24:], uint32(len(body)))
	return buf, nil
}

// BeginFrame appends the header and the method and error sections of a frame
// whose body is not known yet. The caller appends the body to the returned
// buffer (a codec's Marshal does that, without a copy) and then calls
// FinishFrame on the frame's bytes:
//
//	start := len(buf)
//	buf, err = protocol.BeginFrame(buf, &h, method, "")
//	buf, err = codec.Marshal(buf, args)
//	err = protocol.FinishFrame(buf[start:])
func BeginFrame(dst []byte, h *Header, method, errText string) ([]byte, error) {
	if len(method) > MaxMethodLen {
		return dst, fmt.Errorf("%w: service method of %d bytes (limit %d)", ErrFrameTooLarge, len(method), MaxMethodLen)
	}
	if uint64(len(errText)) > math.MaxUint32 {
		return dst, fmt.Errorf("%w: error text of %d bytes", ErrFrameTooLarge, len(errText))
	}
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...) // no allocation when dst has room
	putHeader(dst[start:], h, len(method), len(errText), 0)
	dst = append(dst, method...)
	return append(dst, errText...), nil
}

// FinishFrame writes the body length into the header of frame, which holds
// exactly one frame started by BeginFrame and followed by its body.
func FinishFrame(frame []byte) error {
	if len(frame) < HeaderSize {
		return fmt.Errorf("%w: %d bytes cannot hold a header", ErrTruncated, len(frame))
	}
	mlen := int(binary.BigEndian.Uint16(frame[6:]))
	elen := int(binary.BigEndian.Uint32(frame[20:]))
	blen := len(frame) - HeaderSize - mlen - elen
	switch {
	case blen < 0:
		return fmt.Errorf("%w: frame shorter than its sections", ErrTruncated)
	case uint64(blen) > math.MaxUint32:
		return fmt.Errorf("%w: body of %d bytes", ErrFrameTooLarge, blen)
	}
	binary.BigEndian.PutUint32(frame[24:], uint32(blen))
	return nil
}
