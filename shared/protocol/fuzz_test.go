package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"testing"
	"time"
)

// fuzzMax is a small frame limit, so that the fuzzer reaches it often.
const fuzzMax = 4096

func addSeeds(f *testing.F) {
	for _, s := range samples {
		wire, _ := AppendFrame(nil, &s.h, s.method, s.errText, []byte(s.body))
		f.Add(wire)
	}
	two, _ := AppendFrame(nil, &samples[0].h, "A.B", "", []byte("xy"))
	two, _ = AppendFrame(two, &samples[3].h, "", "err", nil)
	f.Add(two)
	f.Add(two[:len(two)-1])
	// Requests whose flag announces metadata the body does not hold: the
	// framing is intact, only SplitMetadata refuses them.
	for _, body := range []string{"", "\x00\x00\x00\x09\x00\x01k", "\x00\x00\x00\x03\x00\x05kv", "\x00\x01\x00\x00"} {
		wire, _ := AppendFrame(nil, &Header{Type: TypeRequest, Flags: FlagMetadata, Seq: 3}, "A.B", "", []byte(body))
		f.Add(wire)
	}
	f.Add(header(0, 0, 1<<31))
	f.Add([]byte("RS"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
}

// FuzzParse: whatever the bytes, Parse never panics and never claims more
// than it was given; every frame it accepts re-encodes to exactly its bytes;
// it is consistent with FrameLen.
func FuzzParse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		b := data
		for {
			var fr Frame
			n, err := Parse(b, fuzzMax, &fr)
			size, lenErr := FrameLen(b, fuzzMax)
			if (err == nil) != (lenErr == nil) {
				t.Fatalf("Parse error %v, FrameLen error %v", err, lenErr)
			}
			if err != nil || n == 0 {
				if n != 0 {
					t.Fatalf("Parse returned %d bytes with error %v", n, err)
				}
				if err == nil && size > 0 && size <= len(b) {
					t.Fatalf("FrameLen says %d bytes, have %d, but Parse wants more", size, len(b))
				}
				return
			}
			if n > len(b) || n > fuzzMax || n != size || n != fr.Size() {
				t.Fatalf("Parse returned %d of %d bytes; FrameLen %d; Size %d", n, len(b), size, fr.Size())
			}
			again, err := AppendFrame(nil, &fr.Header, string(fr.Method), string(fr.Error), fr.Body)
			if err != nil {
				t.Fatalf("re-encoding an accepted frame: %v", err)
			}
			if !bytes.Equal(again, b[:n]) {
				t.Fatalf("re-encoded frame differs:\n got %x\nwant %x", again, b[:n])
			}
			if fr.Flags&FlagMetadata != 0 {
				checkSplit(t, fr.Body, fuzzMax)
			}
			b = b[n:]
		}
	})
}

// FuzzReadFrame: the blocking reader never panics, never grows its buffer
// past the limit, and agrees with Parse frame by frame.
func FuzzReadFrame(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		var buf []byte
		rest := data
		for {
			var fr, pf Frame
			var err error
			buf, err = ReadFrame(br, fuzzMax, &fr, buf)
			if cap(buf) > fuzzMax {
				t.Fatalf("buffer grew to %d bytes, limit %d", cap(buf), fuzzMax)
			}
			n, perr := Parse(rest, fuzzMax, &pf)
			switch {
			case errors.Is(err, io.EOF):
				if len(rest) != 0 {
					t.Fatalf("io.EOF with %d bytes left", len(rest))
				}
				return
			case errors.Is(err, ErrTruncated):
				if perr != nil || n != 0 {
					t.Fatalf("ReadFrame: truncated; Parse: %d, %v", n, perr)
				}
				return
			case err != nil:
				if perr == nil || errors.Unwrap(perr) != errors.Unwrap(err) {
					t.Fatalf("ReadFrame error %v; Parse error %v", err, perr)
				}
				return
			}
			if perr != nil || n == 0 {
				t.Fatalf("ReadFrame read a frame; Parse: %d, %v", n, perr)
			}
			if fr.Header != pf.Header || !bytes.Equal(fr.Method, pf.Method) || !bytes.Equal(fr.Error, pf.Error) || !bytes.Equal(fr.Body, pf.Body) {
				t.Fatalf("ReadFrame and Parse disagree: %+v vs %+v", fr, pf)
			}
			rest = rest[n:]
		}
	})
}

// FuzzRoundTrip: any frame that can be encoded decodes to itself, through
// both decoders.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(1), uint8(2), uint8(0), uint64(1), uint32(0), "Arith.Add", "", []byte("args"))
	f.Add(uint8(2), uint8(1), uint8(1), uint64(1<<63), uint32(1500), "", "boom", []byte(nil))
	f.Add(uint8(5), uint8(0), uint8(3), uint64(0), uint32(1<<31), "x.y.z", "e", []byte{0, 1, 2})
	f.Fuzz(func(t *testing.T, typ, codecID, flags uint8, seq uint64, budgetMS uint32, method, errText string, body []byte) {
		h := Header{
			Type:   Type(1 + typ%5),
			Codec:  codecID,
			Flags:  Flags(flags),
			Seq:    seq,
			Budget: time.Duration(budgetMS) * time.Millisecond,
		}
		wire, err := AppendFrame([]byte("prefix"), &h, method, errText, body)
		if err != nil {
			t.Fatal(err)
		}
		wire = wire[len("prefix"):]
		var pf, rf Frame
		n, err := Parse(wire, 0, &pf)
		if err != nil || n != len(wire) {
			t.Fatalf("Parse: %d of %d, %v", n, len(wire), err)
		}
		if _, err := ReadFrame(bufio.NewReader(bytes.NewReader(wire)), 0, &rf, nil); err != nil {
			t.Fatalf("ReadFrame: %v", err)
		}
		for _, got := range []*Frame{&pf, &rf} {
			if got.Header != h || string(got.Method) != method || string(got.Error) != errText || !bytes.Equal(got.Body, body) {
				t.Fatalf("round trip changed the frame: %+v", got)
			}
		}
	})
}

// checkSplit runs SplitMetadata on body and, when it accepts the body,
// checks what it returned: the block and the payload make up the body, and
// RangeMetadata visits whole pairs that make up the block.
func checkSplit(t *testing.T, body []byte, max int) (md []byte, ok bool) {
	t.Helper()
	md, payload, err := SplitMetadata(body, max)
	if err != nil {
		if !errors.Is(err, ErrBadMetadata) && !errors.Is(err, ErrMetadataTooLarge) {
			t.Fatalf("SplitMetadata: unexpected error %v", err)
		}
		if md != nil || payload != nil {
			t.Fatalf("SplitMetadata returned sections with error %v", err)
		}
		return nil, false
	}
	if len(md) > max || 4+len(md)+len(payload) != len(body) || int(binary.BigEndian.Uint32(body)) != len(md) {
		t.Fatalf("SplitMetadata: block of %d and payload of %d from a body of %d", len(md), len(payload), len(body))
	}
	if cap(md) != len(md) || cap(payload) != len(payload) ||
		(len(md) > 0 && &md[0] != &body[4]) || (len(payload) > 0 && &payload[0] != &body[4+len(md)]) {
		t.Fatalf("SplitMetadata: sections do not alias the body, or can be appended over")
	}
	sum := 0
	RangeMetadata(md, func(k, v []byte) bool {
		sum += pairOverhead + len(k) + len(v)
		return true
	})
	if sum != len(md) {
		t.Fatalf("RangeMetadata visited pairs of %d bytes in a block of %d", sum, len(md))
	}
	return md, true
}

// fuzzMDMax is a small metadata limit, so that the fuzzer reaches it often.
const fuzzMDMax = 512

// FuzzSplitMetadata: whatever the body, SplitMetadata never panics; a block
// it accepts is whole pairs for RangeMetadata; a map survives AppendMetadata,
// SplitMetadata and RangeMetadata; and the block of a map is canonical:
// a block of sorted, distinct keys re-encodes to exactly its bytes.
func FuzzSplitMetadata(f *testing.F) {
	seeds := []map[string]string{
		nil,
		{"": ""},
		{"authorization": "Bearer x", "request-id": "42"},
		{"k\x00": "\xff\x00", "\x00": ""},
	}
	for _, md := range seeds {
		b, _ := AppendMetadata(nil, md, 0)
		f.Add(append(b, "payload"...))
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 9, 0, 1, 'k'})
	f.Add([]byte{0, 0, 0, 7, 0, 1, 'k', 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 2, 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		// SplitMetadata on arbitrary bytes, with a small limit and the
		// largest one.
		md, ok := checkSplit(t, data, fuzzMDMax)
		checkSplit(t, data, math.MaxInt)
		if ok {
			m := map[string]string{}
			sorted := true
			var prev []byte
			RangeMetadata(md, func(k, v []byte) bool {
				if prev != nil && bytes.Compare(prev, k) >= 0 {
					sorted = false
				}
				prev = k
				m[string(k)] = string(v)
				return true
			})
			again, err := AppendMetadata(nil, m, fuzzMDMax)
			if sorted && (err != nil || !bytes.Equal(again[4:], md)) {
				t.Fatalf("sorted pairs re-encode differently (%v):\n got %x\nwant %x", err, again, md)
			}
			roundTripMetadata(t, m)
		}

		// and a map made of the bytes: fields split at 0x00, taken in pairs.
		fields := bytes.Split(data, []byte{0})
		m := map[string]string{}
		for i := 0; i+1 < len(fields); i += 2 {
			m[string(fields[i])] = string(fields[i+1])
		}
		roundTripMetadata(t, m)
	})
}

// roundTripMetadata encodes m and decodes it again; a block over the limit
// must be refused, appending nothing.
func roundTripMetadata(t *testing.T, m map[string]string) {
	t.Helper()
	size := 0
	for k, v := range m {
		size += pairOverhead + len(k) + len(v)
	}
	dst := []byte("prefix")
	wire, err := AppendMetadata(dst, m, fuzzMDMax)
	if size > fuzzMDMax {
		if !errors.Is(err, ErrMetadataTooLarge) || len(wire) != len(dst) {
			t.Fatalf("a block of %d bytes, limit %d: %v, %d bytes appended", size, fuzzMDMax, err, len(wire)-len(dst))
		}
		return
	}
	if err != nil {
		t.Fatalf("AppendMetadata: %v", err)
	}
	wire = append(wire, "payload"...)
	md, payload, err := SplitMetadata(wire[len(dst):], fuzzMDMax)
	if err != nil || len(md) != size || string(payload) != "payload" {
		t.Fatalf("SplitMetadata of an encoded map: %v; block of %d, want %d; payload %q", err, len(md), size, payload)
	}
	got := map[string]string{}
	RangeMetadata(md, func(k, v []byte) bool {
		got[string(k)] = string(v)
		return true
	})
	if len(got) != len(m) {
		t.Fatalf("round trip gave %d pairs, want %d", len(got), len(m))
	}
	for k, v := range m {
		if w, ok := got[k]; !ok || w != v {
			t.Fatalf("round trip lost %q=%q (got %q, %v)", k, v, w, ok)
		}
	}
}
