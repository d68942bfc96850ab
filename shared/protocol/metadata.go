package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// A request carrying FlagMetadata starts its body with a metadata block:
//
//	| mdlen u32 | pairs (mdlen bytes) | payload (the codec's bytes) |
//
// and the pairs follow each other, each one
//
//	| klen u16 | key (klen bytes) | vlen u32 | value (vlen bytes) |
//
// big-endian, as the header. The block is part of the body, so the frame
// limit counts it; the metadata limit bounds it on its own.

// DefaultMaxMetadataSize is the largest metadata block, in bytes (mdlen: the
// pairs, not the length in front of them), that a side accepts or writes
// when it was given no other limit: 64 KiB.
const DefaultMaxMetadataSize = 64 << 10

// pairOverhead is the size of the two lengths in front of a pair's key and
// value.
const pairOverhead = 2 + 4

// The errors of the metadata functions, sentinels for errors.Is; the
// returned errors wrap them with the offending values. Unlike the decoders'
// errors they concern one frame only: its framing is intact and the
// connection stays usable.
var (
	// ErrBadMetadata: a metadata block is malformed: its length, or the
	// length of a key or value in it, overruns what holds it, or it ends
	// inside a pair.
	ErrBadMetadata = errors.New("protocol: malformed metadata")
	// ErrMetadataTooLarge: a metadata block is larger than the limit, or a
	// key is longer than its 16-bit length can say.
	ErrMetadataTooLarge = errors.New("protocol: metadata too large")
)

// mdLimit returns max, or DefaultMaxMetadataSize when max is not positive,
// never more than the 32-bit block length can say.
func mdLimit(max int) uint64 {
	if max <= 0 {
		return DefaultMaxMetadataSize
	}
	return min(uint64(max), math.MaxUint32)
}

// AppendMetadata appends the metadata block holding md to dst (its length,
// then the pairs, keys in sorted order so that the same map always gives the
// same bytes) and returns the extended buffer. It allocates only when dst
// lacks room, or to sort more than 16 keys. An empty md gives an empty
// block, the four bytes of a zero length; a caller with no metadata sends no
// block and no FlagMetadata instead.
//
// max is the largest block accepted (DefaultMaxMetadataSize when max <= 0).
// AppendMetadata fails with ErrMetadataTooLarge, appending nothing, when the
// block would be larger or a key is longer than 65,535 bytes. Keys and
// values are bytes: nothing is checked or normalised in them.
func AppendMetadata(dst []byte, md map[string]string, max int) ([]byte, error) {
	var stack [16]string
	keys := stack[:0]
	if len(md) > len(stack) {
		keys = make([]string, 0, len(md))
	}
	var size uint64
	for k, v := range md {
		if len(k) > math.MaxUint16 {
			return dst, fmt.Errorf("%w: key of %d bytes (limit %d)", ErrMetadataTooLarge, len(k), math.MaxUint16)
		}
		size += pairOverhead + uint64(len(k)) + uint64(len(v))
		keys = append(keys, k)
	}
	if lim := mdLimit(max); size > lim {
		return dst, fmt.Errorf("%w: block of %d bytes, limit %d", ErrMetadataTooLarge, size, lim)
	}
	slices.Sort(keys)

	dst = slices.Grow(dst, 4+int(size))
	dst = binary.BigEndian.AppendUint32(dst, uint32(size))
	for _, k := range keys {
		v := md[k]
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(k)))
		dst = append(dst, k...)
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(v)))
		dst = append(dst, v...)
	}
	return dst, nil
}

// SplitMetadata splits the body of a request carrying FlagMetadata into its
// metadata block and the payload after it (the codec's bytes). Both alias
// body, and neither can be appended to over the other.
//
// It checks the block's length against len(body) and against max (the
// largest block accepted; DefaultMaxMetadataSize when max <= 0), refusing a
// larger one with ErrMetadataTooLarge, and it checks the lengths of every
// pair, refusing a malformed block with ErrBadMetadata, so that
// RangeMetadata on the block it returns visits every pair. SplitMetadata
// never panics, whatever body holds, and allocates nothing but the error it
// returns.
func SplitMetadata(body []byte, max int) (md, payload []byte, err error) {
	if len(body) < 4 {
		return nil, nil, fmt.Errorf("%w: a body of %d bytes cannot hold the block's length", ErrBadMetadata, len(body))
	}
	n := uint64(binary.BigEndian.Uint32(body))
	if lim := mdLimit(max); n > lim {
		return nil, nil, fmt.Errorf("%w: block of %d bytes announced, limit %d", ErrMetadataTooLarge, n, lim)
	}
	if n > uint64(len(body)-4) {
		return nil, nil, fmt.Errorf("%w: block of %d bytes announced in a body of %d", ErrBadMetadata, n, len(body))
	}
	end := 4 + int(n)
	md = body[4:end:end]
	if err := checkPairs(md); err != nil {
		return nil, nil, err
	}
	return md, body[end:len(body):len(body)], nil
}

// checkPairs checks that md is a sequence of whole pairs.
func checkPairs(md []byte) error {
	for off := 0; off < len(md); {
		pair := off
		if len(md)-off < 2 {
			return fmt.Errorf("%w: pair at offset %d: %d bytes cannot hold a key length", ErrBadMetadata, pair, len(md)-off)
		}
		klen := int(binary.BigEndian.Uint16(md[off:]))
		off += 2
		if len(md)-off < klen {
			return fmt.Errorf("%w: pair at offset %d: key of %d bytes overruns the block", ErrBadMetadata, pair, klen)
		}
		off += klen
		if len(md)-off < 4 {
			return fmt.Errorf("%w: pair at offset %d: %d bytes cannot hold a value length", ErrBadMetadata, pair, len(md)-off)
		}
		vlen := uint64(binary.BigEndian.Uint32(md[off:]))
		off += 4
		if vlen > uint64(len(md)-off) {
			return fmt.Errorf("%w: pair at offset %d: value of %d bytes overruns the block", ErrBadMetadata, pair, vlen)
		}
		off += int(vlen)
	}
	return nil
}

// RangeMetadata calls fn for each pair of md, a block returned by
// SplitMetadata, in the order of the block, until fn returns false. key and
// value alias md (copy them to keep them) and neither can be appended to
// over what follows. RangeMetadata does not allocate. Given bytes that
// SplitMetadata would refuse, it never panics: it stops at the first pair
// that is malformed.
func RangeMetadata(md []byte, fn func(key, value []byte) bool) {
	for len(md) >= 2 {
		klen := int(binary.BigEndian.Uint16(md))
		md = md[2:]
		if len(md) < klen+4 {
			return
		}
		key := md[:klen:klen]
		vlen := uint64(binary.BigEndian.Uint32(md[klen:]))
		md = md[klen+4:]
		if vlen > uint64(len(md)) {
			return
		}
		value := md[:vlen:vlen]
		md = md[vlen:]
		if !fn(key, value) {
			return
		}
	}
}
