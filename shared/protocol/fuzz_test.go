package protocol

import (
	"bufio"
	"bytes"
	"errors"
	"io"
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
