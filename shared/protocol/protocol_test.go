package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sample is a frame to encode, with its sections as strings.
type sample struct {
	h                     Header
	method, errText, body string
}

func (s sample) encode(t testing.TB) []byte {
	t.Helper()
	b, err := AppendFrame(nil, &s.h, s.method, s.errText, []byte(s.body))
	require.NoError(t, err)
	return b
}

// matches is check without testify, for the loops that decode many frames.
func (s sample) matches(f *Frame) bool {
	return s.h == f.Header && s.method == string(f.Method) && s.errText == string(f.Error) && s.body == string(f.Body)
}

func (s sample) check(t testing.TB, f *Frame) {
	t.Helper()
	require.Equal(t, s.h, f.Header)
	require.Equal(t, s.method, string(f.Method))
	require.Equal(t, s.errText, string(f.Error))
	require.Equal(t, s.body, string(f.Body))
}

var samples = []sample{
	{h: Header{Type: TypeRequest, Codec: 2, Seq: 1}, method: "Arith.Add", body: "args"},
	{h: Header{Type: TypeRequest, Codec: 1, Flags: FlagDeadline, Seq: math.MaxUint64, Budget: 1500 * time.Millisecond}, method: "a.b.C"},
	{h: Header{Type: TypeReply, Codec: 3, Seq: 7}, body: strings.Repeat("x", 4096)},
	{h: Header{Type: TypeReply, Codec: 2, Flags: FlagError, Seq: 8}, errText: "rpc: can't find service X.Y"},
	{h: Header{Type: TypeOneway, Codec: 1, Seq: 9}, method: "Log.Write", body: "\x00\xff"},
	{h: Header{Type: TypePing, Seq: 10}},
	{h: Header{Type: TypePong, Seq: 10}},
	{h: Header{Type: TypeRequest, Codec: 3, Flags: FlagMetadata | FlagDeadline, Seq: 11, Budget: 250 * time.Millisecond}, method: "Echo.Echo", body: mdBody(map[string]string{"request-id": "11", "tenant": "acme"}, `"hi"`)},
	{h: Header{Type: TypeOneway, Codec: 1, Flags: FlagMetadata, Seq: 12}, method: "Log.Write", body: mdBody(map[string]string{"": ""}, "line")},
}

func TestRoundTrip(t *testing.T) {
	for _, s := range samples {
		t.Run(s.h.Type.String(), func(t *testing.T) {
			wire := s.encode(t)
			require.Len(t, wire, HeaderSize+len(s.method)+len(s.errText)+len(s.body))

			var f Frame
			n, err := Parse(wire, 0, &f)
			require.NoError(t, err)
			require.Equal(t, len(wire), n)
			s.check(t, &f)
			require.Equal(t, n, f.Size())

			var g Frame
			_, err = ReadFrame(bufio.NewReader(bytes.NewReader(wire)), 0, &g, nil)
			require.NoError(t, err)
			s.check(t, &g)
		})
	}
}

// The header is drawn in docs/protocol.md: keep the two in step.
func TestHeaderLayout(t *testing.T) {
	h := Header{Type: TypeReply, Codec: 3, Flags: FlagError | FlagDeadline, Seq: 0x0102030405060708, Budget: 2 * time.Second}
	b, err := AppendFrame(nil, &h, "S.M", "boom", []byte("body!"))
	require.NoError(t, err)
	want := []byte{
		'R', 'S', // magic
		1,    // version
		2,    // type: reply
		3,    // codec
		0b11, // flags: error | deadline
		0, 3, // method length
		1, 2, 3, 4, 5, 6, 7, 8, // seq
		0, 0, 0x07, 0xd0, // budget: 2000 ms
		0, 0, 0, 4, // error length
		0, 0, 0, 5, // body length
	}
	require.Equal(t, want, b[:HeaderSize])
	require.Equal(t, "S.Mboombody!", string(b[HeaderSize:]))
}

func TestBeginFinishFrame(t *testing.T) {
	prefix := []byte("previous frame bytes")
	buf := append([]byte(nil), prefix...)
	h := Header{Type: TypeRequest, Codec: 1, Seq: 42}
	buf, err := BeginFrame(buf, &h, "Echo.Echo", "")
	require.NoError(t, err)
	buf = append(buf, "appended body"...)
	require.NoError(t, FinishFrame(buf[len(prefix):]))
	require.Equal(t, prefix, buf[:len(prefix)])

	var f Frame
	n, err := Parse(buf[len(prefix):], 0, &f)
	require.NoError(t, err)
	require.Equal(t, len(buf)-len(prefix), n)
	sample{h: h, method: "Echo.Echo", body: "appended body"}.check(t, &f)

	require.ErrorIs(t, FinishFrame(buf[len(prefix):len(prefix)+10]), ErrTruncated)
	require.ErrorIs(t, FinishFrame(buf[len(prefix):len(prefix)+HeaderSize+3]), ErrTruncated)
}

func TestEncodeLimits(t *testing.T) {
	h := Header{Type: TypeRequest}
	dst := []byte("keep")
	got, err := AppendFrame(dst, &h, strings.Repeat("m", MaxMethodLen+1), "", nil)
	require.ErrorIs(t, err, ErrFrameTooLarge)
	require.Equal(t, "keep", string(got))

	_, err = AppendFrame(nil, &h, strings.Repeat("m", MaxMethodLen), "", nil)
	require.NoError(t, err)
}

func TestEncodeAllocs(t *testing.T) {
	h := Header{Type: TypeRequest, Codec: 1, Seq: 1}
	body := make([]byte, 64)
	buf := make([]byte, 0, 1024)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		buf, err = AppendFrame(buf[:0], &h, "Echo.Echo", "", body)
		if err != nil {
			t.Fatal(err)
		}
		buf, err = BeginFrame(buf[:0], &h, "Echo.Echo", "")
		if err != nil {
			t.Fatal(err)
		}
		buf = append(buf, body...)
		if err := FinishFrame(buf); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

func TestDecodeAllocs(t *testing.T) {
	wire := samples[0].encode(t)
	var f Frame
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := Parse(wire, 0, &f); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs, "Parse")

	r := bytes.NewReader(wire)
	br := bufio.NewReader(r)
	buf := make([]byte, 0, 256)
	allocs = testing.AllocsPerRun(100, func() {
		r.Reset(wire)
		br.Reset(r)
		var err error
		if buf, err = ReadFrame(br, 0, &f, buf); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs, "ReadFrame with a buffer of its own")
}

// header returns a valid request header announcing the given lengths.
func header(mlen uint16, elen, blen uint32) []byte {
	b := make([]byte, HeaderSize)
	putHeader(b, &Header{Type: TypeRequest}, 0, 0, 0)
	binary.BigEndian.PutUint16(b[6:], mlen)
	binary.BigEndian.PutUint32(b[20:], elen)
	binary.BigEndian.PutUint32(b[24:], blen)
	return b
}

func TestDecodeErrors(t *testing.T) {
	valid := samples[0].encode(t)
	mutate := func(i int, v byte) []byte {
		b := bytes.Clone(valid)
		b[i] = v
		return b
	}
	tests := []struct {
		name string
		wire []byte
		max  int
		want error
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), 0, ErrBadMagic},
		{"bad magic", mutate(1, 'X'), 0, ErrBadMagic},
		{"version 0", mutate(2, 0), 0, ErrUnsupportedVersion},
		{"version 2", mutate(2, 2), 0, ErrUnsupportedVersion},
		{"type 0", mutate(3, 0), 0, ErrUnknownType},
		{"type 6", mutate(3, 6), 0, ErrUnknownType},
		{"body over default limit", header(0, 0, DefaultMaxFrameSize), 0, ErrFrameTooLarge},
		{"sections over a small limit", header(10, 10, 10), HeaderSize + 29, ErrFrameTooLarge},
		{"4 GiB body", header(0, 0, math.MaxUint32), 0, ErrFrameTooLarge},
		{"4 GiB error and body", header(math.MaxUint16, math.MaxUint32, math.MaxUint32), math.MaxInt, nil}, // fits the limit: needs more bytes
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.max == math.MaxInt && strconv.IntSize == 32 {
				t.Skip("on 32 bits no limit an int can say is above 4 GiB: the frame is refused as too large instead")
			}
			var f Frame
			n, err := Parse(tt.wire, tt.max, &f)
			require.Zero(t, n)
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.want)
			_, err = FrameLen(tt.wire, tt.max)
			require.ErrorIs(t, err, tt.want)
			_, err = ReadFrame(bufio.NewReader(bytes.NewReader(tt.wire)), tt.max, &f, nil)
			require.ErrorIs(t, err, tt.want)
		})
	}
}

func TestFrameLimitIsInclusive(t *testing.T) {
	wire := samples[0].encode(t)
	var f Frame
	n, err := Parse(wire, len(wire), &f)
	require.NoError(t, err)
	require.Equal(t, len(wire), n)
	_, err = Parse(wire, len(wire)-1, &f)
	require.ErrorIs(t, err, ErrFrameTooLarge)
}

// A header announcing a 4 GiB body is refused on the header: the reader
// allocates nothing for the body and reads no further.
func TestHugeFrameRefusedBeforeAllocation(t *testing.T) {
	wire := header(0, 0, math.MaxUint32)
	br := bufio.NewReader(bytes.NewReader(wire))
	buf := make([]byte, 0, 64)
	var f Frame
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	buf, err := ReadFrame(br, 0, &f, buf)
	runtime.ReadMemStats(&after)
	require.ErrorIs(t, err, ErrFrameTooLarge)
	require.Equal(t, 64, cap(buf), "the buffer was not grown")
	// The error's text is all that was allocated.
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(4096))
	require.Contains(t, err.Error(), "4294967323 bytes announced")
}

// A peer that announces a large frame within the limit but sends little of
// it gets memory in proportion to what it sent.
func TestReadFrameGrowsWithTheBytes(t *testing.T) {
	wire := append(header(0, 0, 8<<20), make([]byte, 1000)...)
	var f Frame
	buf, err := ReadFrame(bufio.NewReader(bytes.NewReader(wire)), 0, &f, nil)
	require.ErrorIs(t, err, ErrTruncated)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.LessOrEqual(t, cap(buf), 2*readChunk)

	// and all of a large frame is read, across many Read calls.
	big := sample{h: Header{Type: TypeRequest}, method: "Big.Frame", body: strings.Repeat("0123456789", 100_000)}
	wire = big.encode(t)
	_, err = ReadFrame(bufio.NewReader(iotest.HalfReader(bytes.NewReader(wire))), 0, &f, nil)
	require.NoError(t, err)
	big.check(t, &f)
}

func TestReadFrameEndOfStream(t *testing.T) {
	var f Frame
	_, err := ReadFrame(bufio.NewReader(bytes.NewReader(nil)), 0, &f, nil)
	require.ErrorIs(t, err, io.EOF, "a clean end between frames")
	require.NotErrorIs(t, err, ErrTruncated)

	wire := samples[0].encode(t)
	for _, cut := range []int{1, HeaderSize - 1, HeaderSize, len(wire) - 1} {
		_, err := ReadFrame(bufio.NewReader(bytes.NewReader(wire[:cut])), 0, &f, nil)
		require.ErrorIs(t, err, ErrTruncated, "cut at %d", cut)
		require.ErrorIs(t, err, io.ErrUnexpectedEOF, "cut at %d", cut)

		n, err := Parse(wire[:cut], 0, &f)
		require.NoError(t, err, "Parse waits for more")
		require.Zero(t, n)
	}

	boom := errors.New("boom")
	_, err = ReadFrame(bufio.NewReader(iotest.ErrReader(boom)), 0, &f, nil)
	require.ErrorIs(t, err, boom, "other read errors pass through")
}

func TestReadFrameBuffers(t *testing.T) {
	var stream []byte
	for _, s := range samples {
		stream = append(stream, s.encode(t)...)
	}
	// A bufio.Reader smaller than a header works too.
	br := bufio.NewReaderSize(iotest.OneByteReader(bytes.NewReader(stream)), 16)
	var buf []byte
	var f Frame
	for _, s := range samples {
		var err error
		buf, err = ReadFrame(br, 0, &f, buf)
		require.NoError(t, err)
		s.check(t, &f)
	}
	_, err := ReadFrame(br, 0, &f, buf)
	require.ErrorIs(t, err, io.EOF)
}

// Sections alias the buffer but cannot overwrite each other.
func TestSectionsDoNotOverlap(t *testing.T) {
	wire := sample{h: Header{Type: TypeReply, Flags: FlagError}, method: "m", errText: "e", body: "b"}.encode(t)
	var f Frame
	_, err := Parse(wire, 0, &f)
	require.NoError(t, err)
	_ = append(f.Method, 'X')
	_ = append(f.Error, 'X')
	require.Equal(t, "e", string(f.Error))
	require.Equal(t, "b", string(f.Body))
}

// stream1000 returns 1,000 frames of varied sizes, one after another.
func stream1000(t testing.TB) ([]byte, []sample) {
	rng := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	var want []sample
	for i := range 1000 {
		s := sample{h: Header{Type: Type(1 + i%5), Codec: uint8(i % 4), Seq: uint64(i)}}
		if rng.IntN(3) == 0 {
			s.h.Flags, s.h.Budget = FlagDeadline, time.Duration(rng.IntN(5000))*time.Millisecond
		}
		s.method = strings.Repeat("M", rng.IntN(12))
		if rng.IntN(4) == 0 {
			s.errText = strings.Repeat("e", rng.IntN(20))
		}
		s.body = strings.Repeat(string(rune('a'+i%26)), rng.IntN(60))
		want = append(want, s)
		stream = append(stream, s.encode(t)...)
	}
	return stream, want
}

// feed plays a non-blocking reader: the bytes arrive in chunks, each chunk
// is appended to the input buffer, and every complete frame is decoded.
func feed(t testing.TB, stream []byte, chunks func(i int) int, want []sample) {
	t.Helper()
	var in []byte
	got := 0
	var f Frame
	for off := 0; off < len(stream); {
		n := min(chunks(off), len(stream)-off)
		in = append(in, stream[off:off+n]...)
		off += n
		for {
			used, err := Parse(in, 0, &f)
			if err != nil {
				require.NoError(t, err)
			}
			if used == 0 {
				break
			}
			if !want[got].matches(&f) {
				want[got].check(t, &f)
			}
			got++
			in = in[used:]
		}
	}
	require.Equal(t, len(want), got)
	require.Empty(t, in)
}

// Every byte offset of a 1,000-frame stream is a read boundary in one of
// these runs (chunk size 1 alone makes every offset one); the other sizes
// put several frames, and frame tails, in one read.
func TestParseStreamSplitEverywhere(t *testing.T) {
	stream, want := stream1000(t)
	for size := 1; size <= 97; size++ {
		t.Run(fmt.Sprint("chunk=", size), func(t *testing.T) {
			feed(t, stream, func(int) int { return size }, want)
		})
	}
	rng := rand.New(rand.NewPCG(3, 4))
	feed(t, stream, func(int) int { return 1 + rng.IntN(300) }, want)
	feed(t, stream, func(int) int { return len(stream) }, want)
}

// Splitting the stream in two: the second part must finish what the first
// began. Every offset of the first frames is a cut, then every 61st.
func TestParseStreamSplitInTwo(t *testing.T) {
	stream, want := stream1000(t)
	for cut := 0; cut <= len(stream); {
		feed(t, stream, func(off int) int {
			if off < cut {
				return cut - off
			}
			return len(stream)
		}, want)
		if cut < 1000 {
			cut++
		} else {
			cut += 61
		}
	}
}

func TestBudgetUntil(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	tests := []struct {
		name  string
		d     time.Time
		ok    bool
		want  time.Duration
		flags Flags
	}{
		{"no deadline", time.Time{}, false, 0, 0},
		{"past", now.Add(-time.Second), true, 0, FlagDeadline},
		{"exactly now", now, true, 0, FlagDeadline},
		{"rounded up", now.Add(1500 * time.Microsecond), true, 2 * time.Millisecond, FlagDeadline},
		{"whole ms", now.Add(3 * time.Second), true, 3 * time.Second, FlagDeadline},
		{"capped", now.Add(100 * 24 * time.Hour), true, MaxBudget, FlagDeadline},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, fl := BudgetUntil(tt.d, tt.ok, now)
			assert.Equal(t, tt.want, b)
			assert.Equal(t, tt.flags, fl)
		})
	}
	// A budget survives the wire in whole milliseconds.
	h := Header{Type: TypeRequest, Flags: FlagDeadline, Budget: 1234 * time.Millisecond}
	wire, err := AppendFrame(nil, &h, "", "", nil)
	require.NoError(t, err)
	var f Frame
	_, err = Parse(wire, 0, &f)
	require.NoError(t, err)
	require.Equal(t, 1234*time.Millisecond, f.Budget)
}

func TestTypeString(t *testing.T) {
	require.Equal(t, "request", TypeRequest.String())
	require.Equal(t, "pong", TypePong.String())
	require.Equal(t, "type(9)", Type(9).String())
}

// The frames drawn in docs/protocol.md, byte for byte.
func TestDocExample(t *testing.T) {
	unhex := func(s string) []byte {
		var b []byte
		for _, f := range strings.Fields(s) {
			var v byte
			_, err := fmt.Sscanf(f, "%02x", &v)
			require.NoError(t, err)
			b = append(b, v)
		}
		return b
	}
	call, err := AppendFrame(nil, &Header{Type: TypeRequest, Codec: 1, Flags: FlagDeadline, Seq: 1, Budget: 1500 * time.Millisecond}, "Echo.Echo", "", []byte("hello"))
	require.NoError(t, err)
	require.Equal(t, unhex(`52 53 01 01 01 02 00 09  00 00 00 00 00 00 00 01  00 00 05 dc 00 00 00 00  00 00 00 05
		45 63 68 6f 2e 45 63 68 6f  68 65 6c 6c 6f`), call)

	reply, err := AppendFrame(nil, &Header{Type: TypeReply, Codec: 1, Flags: FlagError, Seq: 2}, "", "divide by zero", nil)
	require.NoError(t, err)
	require.Equal(t, unhex(`52 53 01 02 01 01 00 00  00 00 00 00 00 00 00 02  00 00 00 00 00 00 00 0e  00 00 00 00
		64 69 76 69 64 65 20 62 79 20 7a 65 72 6f`), reply)

	body, err := AppendMetadata(nil, map[string]string{"tenant": "acme"}, 0)
	require.NoError(t, err)
	withMD, err := AppendFrame(nil, &Header{Type: TypeRequest, Codec: 1, Flags: FlagMetadata, Seq: 3}, "Echo.Echo", "", append(body, "hello"...))
	require.NoError(t, err)
	require.Equal(t, unhex(`52 53 01 01 01 04 00 09  00 00 00 00 00 00 00 03  00 00 00 00 00 00 00 00  00 00 00 19
		45 63 68 6f 2e 45 63 68 6f  00 00 00 10  00 06 74 65 6e 61 6e 74  00 00 00 04 61 63 6d 65  68 65 6c 6c 6f`), withMD)
}
