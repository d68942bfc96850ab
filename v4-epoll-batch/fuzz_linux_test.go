package epollbatch

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// The fuzz target of the server's read path: an arbitrary byte stream,
// written in pieces, to a server of its own with small limits. The test
// works out from the stream alone what the server must do with it (the
// same Parse the reactor runs), then checks what the server wrote back and
// why it closed.

// The server's limits: small, so that the fuzzer reaches them.
const (
	fuzzMaxFrame    = 64 << 10
	fuzzMaxInFlight = 8
	fuzzMaxBytes    = 8 << 10 // a few requests of a few KiB pause reading
	fuzzWorkers     = 2       // a third request that naps finds both busy
	fuzzIdleTimeout = 2 * time.Second
)

// The test's own bounds.
const (
	fuzzMaxPieces = 16               // the cut points give at most this many pieces
	fuzzWait      = 5 * time.Second  // for the server to answer, close or settle
	fuzzMaxOutput = 64 << 20         // a server writing more than this is running away
	fuzzSlack     = 10               // goroutines that may come and go between inputs
	fuzzHang      = 40 * time.Second // an input still running after this hangs: see fuzzWatchdog
)

// The bits of the mode argument.
const (
	fuzzCloseBoth   = 1 << iota // close the test's end both ways, not just its write side
	fuzzBurst                   // write the pieces back to back, not each in reads of its own
	fuzzTinyBuffer              // a 16-byte input buffer (less than a header), not 1 KiB
	fuzzInFlightOne             // WithMaxInFlight(1), not fuzzMaxInFlight
)

// napper sleeps a millisecond, then echoes: a call long enough for the
// requests that follow it to find every worker busy.
type napper struct{}

func (napper) Nap(args []byte, reply *[]byte) error {
	time.Sleep(time.Millisecond)
	*reply = append((*reply)[:0], args...)
	return nil
}

// FuzzServerReadPath feeds a server a byte stream in pieces, then
// half-closes (or closes) and reads everything the server writes back.
// Whatever the bytes and wherever the cuts: the server does not panic;
// everything it writes is a reply or a pong to a request or ping of the
// stream, never two for one; a valid stream gets every answer and then a
// clean end of stream, an invalid one gets a close for the reason its
// first bad frame gives; and the server's counts and goroutines come back
// to where they were.
//
// cuts gives the lengths of the first pieces, one byte each (a byte b is
// a piece of b+1 bytes); the rest of the stream is the last piece. mode
// holds the fuzzCloseBoth, fuzzBurst, fuzzTinyBuffer and fuzzInFlightOne
// bits. Built with the tag rpcsteps_portable (make test runs the package
// so too), the same checks hold the portable engine's reader.
//
// Each input costs about a millisecond, and the fuzzer minimizes every
// input that finds new coverage for up to -fuzzminimizetime (60 s by
// default) before it fuzzes on: in a short run, pass -fuzzminimizetime 3s
// or most of the run goes on minimizing one input.
func FuzzServerReadPath(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, stream, cuts []byte, mode byte) {
		fuzzGoroutines.once.Do(func() { fuzzGoroutines.n = runtime.NumGoroutine() })
		fuzzDrainInputBuffers()
		fuzzWatchdog(t)
		want := fuzzExpect(stream)
		logs := &fuzzLog{}
		fuzzCheckAfter(t, logs, want, mode)

		opts := []ServerOption{
			WithMaxFrameSize(fuzzMaxFrame),
			WithMaxInFlight(fuzzMaxInFlight),
			WithMaxBytesInFlight(fuzzMaxBytes),
			WithBufferSize(1 << 10),
			WithIdleTimeout(fuzzIdleTimeout),
			WithWorkers(fuzzWorkers),
			WithReactors(1),
			WithLogger(slog.New(logs)),
		}
		if mode&fuzzTinyBuffer != 0 {
			opts = append(opts, WithBufferSize(16))
		}
		if mode&fuzzInFlightOne != 0 {
			opts = append(opts, WithMaxInFlight(1))
		}
		s := NewServer(opts...)
		require.NoError(t, s.RegisterName("echo", echo{}))
		require.NoError(t, s.RegisterName("fuzz", napper{}))
		fuzzServe(t, s)
		nc := serverPair(t, s)

		// Everything the server writes is read as it comes, so that the
		// server never waits for the test to read.
		nc.SetReadDeadline(time.Now().Add(2 * fuzzWait))
		read := make(chan fuzzOutput, 1)
		go func() { read <- fuzzReadAll(nc) }()

		nc.SetWriteDeadline(time.Now().Add(fuzzWait))
		var werr error
		for _, piece := range fuzzPieces(stream, cuts) {
			if _, werr = nc.Write(piece); werr != nil {
				break
			}
			if mode&fuzzBurst == 0 {
				fuzzAwaitRead(nc)
			}
		}
		if errors.Is(werr, syscall.EPIPE) || errors.Is(werr, syscall.ECONNRESET) {
			if want.end != fuzzRefused {
				t.Fatalf("the server closed before the stream ended (%v), but nothing in it is invalid", werr)
			}
		} else if werr != nil {
			t.Fatalf("writing the stream: %v (the server stopped reading?)", werr)
		}

		closeBoth := mode&fuzzCloseBoth != 0
		if closeBoth {
			nc.Close()
		} else {
			nc.SetReadDeadline(time.Now().Add(fuzzWait))
			if err := nc.CloseWrite(); err != nil && want.end != fuzzRefused {
				t.Fatalf("half-closing: %v", err)
			}
		}
		out := <-read
		switch {
		case errors.Is(out.err, errFuzzTooMuch):
			t.Fatalf("the server wrote more than %d bytes for a stream of %d", fuzzMaxOutput, len(stream))
		case closeBoth:
			// The test closed its end: the read ends however it ends.
		case errors.Is(out.err, io.EOF):
		case errors.Is(out.err, syscall.ECONNRESET) && want.end == fuzzRefused:
			// The server closed with bytes of the stream still unread.
		case errors.Is(out.err, os.ErrDeadlineExceeded):
			t.Fatalf("the server neither finished nor closed within %v of the half-close (stream %s)", fuzzWait, want.end)
		default:
			t.Fatalf("reading the server's answers: %v (stream %s)", out.err, want.end)
		}
		fuzzCheckOutput(t, want, out.data, !closeBoth && want.end == fuzzClean)

		deadline := time.Now().Add(fuzzWait)
		for st := s.Stats(); st.Conns != 0 || st.InFlight != 0; st = s.Stats() {
			if time.Now().After(deadline) {
				t.Fatalf("%v after the connection ended, the server counts %d connections and %d requests in flight", fuzzWait, st.Conns, st.InFlight)
			}
			time.Sleep(100 * time.Microsecond)
		}
		// The reactor logs why it closed just after it counts the
		// connection gone, and not at all once the server is closing: the
		// server's Close (a cleanup) must wait for the record.
		if !closeBoth && want.end != fuzzClean {
			for closes, _ := logs.get(); len(closes) == 0; closes, _ = logs.get() {
				if time.Now().After(deadline) {
					break // fuzzCheckAfter says what is missing
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
	})
}

// fuzzWatchdog crashes the process, with the stacks of every goroutine,
// if the input has not finished (cleanups included) within fuzzHang. Every
// wait of the test is bounded, but a reactor that spins or blocks for good
// makes the server's Close wait for ever, and the fuzzer has no timeout of
// its own: without this, such an input would stall the fuzzer silently
// instead of being reported and kept in testdata.
func fuzzWatchdog(t *testing.T) {
	dog := time.AfterFunc(fuzzHang, func() {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "%s\n\n", buf)
		panic(fmt.Sprintf("FuzzServerReadPath: an input still runs after %v: the server hangs (goroutines above)", fuzzHang))
	})
	t.Cleanup(func() { dog.Stop() }) // registered first: runs after every other cleanup
}

// fuzzServe is serveForTest, except that it waits for the reactors to
// start by yielding, not by sleeping a millisecond at a time: a
// millisecond is most of the time an input takes.
func fuzzServe(t *testing.T, s *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	deadline := time.Now().Add(fuzzWait)
	for !reactorsStarted(s) {
		if time.Now().After(deadline) {
			t.Fatal("the server's reactors did not start")
		}
		runtime.Gosched()
	}
}

// fuzzSeeds adds the seed corpus: between them, every kind of frame a
// client may send and every way a stream can be bad, so that the seed run
// goes through every branch of serverSide.frame that a peer can reach.
func fuzzSeeds(f *testing.F) {
	hello := request(1, "echo.Echo", []byte("hello"))
	ones := make([]byte, fuzzMaxPieces) // one byte per piece
	var twenty, pings, naps, napNotes, big3k []byte
	for seq := uint64(1); seq <= 20; seq++ {
		twenty = append(twenty, request(seq, "echo.Echo", fmt.Appendf(nil, "r%d", seq))...)
	}
	for seq := uint64(1); seq <= 100; seq++ { // more than one event handles (64)
		pings = append(pings, ping(seq)...)
	}
	for seq := uint64(1); seq <= 4; seq++ { // more than the workers
		naps = append(naps, request(seq, "fuzz.Nap", fmt.Appendf(nil, "nap %d", seq))...)
		napNotes = append(napNotes, fuzzRequest(protocol.TypeOneway, seq, codec.Raw, "fuzz.Nap", nil)...)
		big3k = append(big3k, request(seq, "echo.Echo", bytes.Repeat([]byte{byte(seq)}, 3<<10))...)
	}
	// The largest frame the server takes, and the head of one larger.
	atLimit := request(9, "echo.Echo", bytes.Repeat([]byte("L"), fuzzMaxFrame-protocol.HeaderSize-len("echo.Echo")))
	overLimit := request(10, "echo.Echo", bytes.Repeat([]byte("O"), fuzzMaxFrame-protocol.HeaderSize-len("echo.Echo")+1))[:4<<10]
	mixed := fuzzCat(ping(1), request(2, "echo.Echo", []byte("a")), ping(3), request(4, "fuzz.Nap", []byte("b")), ping(5))
	expired, err := service.AppendRequest(fuzzExpired(), nil, protocol.TypeRequest, 6, codec.Raw, "echo.Echo", []byte("late"))
	if err != nil {
		panic(err)
	}
	withErrText, err := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeRequest, Codec: codec.RawID, Seq: 7}, "echo.Echo", "error text in a request", []byte("body"))
	if err != nil {
		panic(err)
	}
	pong, err := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypePong, Seq: 2}, "", "", nil)
	if err != nil {
		panic(err)
	}
	clientReply, err := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeReply, Seq: 2}, "", "", []byte("not yours"))
	if err != nil {
		panic(err)
	}
	md, err := protocol.AppendMetadata(nil, map[string]string{"trace": "fuzz", "k": ""}, 0)
	if err != nil {
		panic(err)
	}
	withMD, err := protocol.AppendFrame(nil, &protocol.Header{Type: protocol.TypeRequest, Codec: codec.RawID, Flags: protocol.FlagMetadata, Seq: 8}, "echo.Echo", "", append(md, "after the block"...))
	if err != nil {
		panic(err)
	}
	badMD := fuzzEdit(withMD, func(b []byte) { b[protocol.HeaderSize+len("echo.Echo")] = 0xff }) // a block longer than the body
	bigHeader := fuzzEdit(request(2, "echo.Echo", nil), func(b []byte) { binary.BigEndian.PutUint32(b[24:], 1<<20) })

	for _, s := range []struct {
		stream, cuts []byte
		mode         byte
	}{
		// Valid streams.
		{nil, nil, 0},
		{hello, nil, 0},
		{hello, ones, 0},                        // the header a byte at a time
		{hello, []byte{13, 20}, 0},              // cut inside the header, then inside the sections
		{hello, []byte{27}, fuzzTinyBuffer},     // the whole header, then the sections
		{twenty, nil, 0},                        // past the in-flight limit: reading pauses and resumes
		{twenty, nil, fuzzInFlightOne},          // one at a time
		{twenty, []byte{40, 3, 200}, fuzzBurst}, // pieces that join
		{twenty, ones, fuzzTinyBuffer | fuzzBurst},
		{ping(1), nil, 0},
		{mixed, []byte{27, 5}, 0},
		{mixed, nil, fuzzInFlightOne}, // pings read while paused
		{pings, nil, fuzzBurst},
		{naps, nil, 0},     // the third and fourth find the workers busy: "overloaded"
		{napNotes, nil, 0}, // one-way requests dropped when the workers are busy
		{fuzzCat(fuzzRequest(protocol.TypeOneway, 1, codec.Raw, "echo.Echo", []byte("note")), ping(2)), nil, 0},
		{big3k, nil, 0}, // past the bytes in flight
		{atLimit, bytes.Repeat([]byte{255}, fuzzMaxPieces), fuzzTinyBuffer}, // the buffer grows from 16 bytes
		{fuzzCat(
			request(1, "echo.Nope", nil),
			request(2, "nope.Nope", nil),
			request(3, "nodot", nil),
			fuzzRequest(protocol.TypeRequest, 4, nil, "echo.Echo", []byte("gob? no")),
			fuzzEdit(request(5, "echo.Echo", []byte("codec 200")), func(b []byte) { b[4] = 200 }),
			expired,
			withErrText,
			withMD,
			badMD,
		), nil, 0},
		{fuzzCat(naps, hello), nil, fuzzCloseBoth}, // the test goes away with calls in flight
		{fuzzCat(twenty, pings), nil, fuzzCloseBoth | fuzzBurst},

		// Truncated streams: the server closes at the end of stream.
		{hello[:len(hello)-3], nil, 0},
		{hello[:10], nil, 0},
		{fuzzCat(hello, hello[:protocol.HeaderSize]), []byte{50}, 0},
		{overLimit, []byte{255, 255}, fuzzTinyBuffer},
		{[]byte("RS"), nil, 0},
		{hello[:len(hello)-1], nil, fuzzCloseBoth},

		// Invalid streams: the server closes on the first bad frame.
		{[]byte("GET / HTTP/1.1\r\nHost: rpcsteps\r\n\r\n"), nil, 0},
		{fuzzCat(hello, fuzzEdit(hello, func(b []byte) { b[0] = 'X' })), nil, 0},
		{fuzzCat(hello, fuzzEdit(hello, func(b []byte) { b[2] = 9 })), nil, 0},
		{fuzzCat(hello, fuzzEdit(hello, func(b []byte) { b[3] = 9 })), nil, 0},
		{bigHeader, nil, 0},
		{fuzzCat(twenty, bigHeader), []byte{100}, fuzzTinyBuffer},
		{fuzzCat(naps, clientReply, hello), nil, 0},
		{fuzzCat(ping(1), pong, ping(3)), nil, 0},
		{fuzzCat(naps, pong), nil, fuzzInFlightOne | fuzzBurst},
		{fuzzCat(twenty, []byte("garbage after twenty requests, long enough for a header")), nil, fuzzCloseBoth},
	} {
		f.Add(s.stream, s.cuts, s.mode)
	}
}

// fuzzRequest encodes a request of type typ; c nil is codec.Gob.
func fuzzRequest(typ protocol.Type, seq uint64, c codec.Codec, method string, body []byte) []byte {
	if c == nil {
		c = codec.Gob
	}
	var args any = body
	if c != codec.Raw {
		args = string(body)
	}
	b, err := service.AppendRequest(context.Background(), nil, typ, seq, c, method, args)
	if err != nil {
		panic(err)
	}
	return b
}

// fuzzExpired is a ctx whose deadline has passed: its requests carry
// FlagDeadline with a zero budget.
func fuzzExpired() context.Context {
	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, 0))
	cancel()
	return ctx
}

func fuzzCat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// fuzzEdit returns a copy of b changed by edit.
func fuzzEdit(b []byte, edit func([]byte)) []byte {
	b = bytes.Clone(b)
	edit(b)
	return b
}

// fuzzDrainInputBuffers empties the pool of input buffers, which every
// server of the process shares: a connection takes any pooled buffer at
// least WithBufferSize large, so without this the buffer an input meets
// (16 bytes, 1 KiB, or one grown to 64 KiB by an earlier input) would
// depend on the inputs before it, and a failure would not reproduce.
// (Bounded, in case the pool is given a New one day.)
func fuzzDrainInputBuffers() {
	for range 1 << 10 {
		if inPool.Get() == nil {
			return
		}
	}
}

// fuzzPieces cuts stream into the pieces cuts gives.
func fuzzPieces(stream, cuts []byte) [][]byte {
	var pieces [][]byte
	for _, c := range cuts[:min(len(cuts), fuzzMaxPieces-1)] {
		if len(stream) == 0 {
			break
		}
		n := min(int(c)+1, len(stream))
		pieces = append(pieces, stream[:n])
		stream = stream[n:]
	}
	if len(stream) > 0 {
		pieces = append(pieces, stream)
	}
	return pieces
}

// fuzzAwaitRead waits, for at most 2 ms, until the server has read all
// that was written on nc (SIOCOUTQ: the bytes sent that the peer has not
// yet consumed), so that each piece comes to the server in reads of its
// own. A server that stopped reading (back-pressure) reads the piece
// later, together with the next. The wait yields the thread as well as
// the goroutine: on a busy machine, a thread that only yields its
// goroutine keeps the CPU from the reactor's thread, which then reads
// late (a third of the pieces of the seeds missed the 2 ms under a load
// of 7 on 2 cores; with sched_yield, 1 in 200).
func fuzzAwaitRead(nc *net.UnixConn) {
	raw, err := nc.SyscallConn()
	if err != nil {
		return
	}
	deadline := time.Now().Add(2 * time.Millisecond)
	for {
		queued := 0
		raw.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		if queued == 0 || time.Now().After(deadline) {
			return
		}
		runtime.Gosched()
		unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// fuzzOutput is what the server wrote, and how the read ended.
type fuzzOutput struct {
	data []byte
	err  error
}

var errFuzzTooMuch = errors.New("more output than fuzzMaxOutput")

func fuzzReadAll(nc net.Conn) fuzzOutput {
	var out fuzzOutput
	buf := make([]byte, 64<<10)
	for {
		n, err := nc.Read(buf)
		out.data = append(out.data, buf[:n]...)
		if err != nil {
			out.err = err
			return out
		}
		if len(out.data) > fuzzMaxOutput {
			out.err = errFuzzTooMuch
			return out
		}
	}
}

// fuzzEnd is how a stream ends, as the server must see it.
type fuzzEnd int

const (
	fuzzClean     fuzzEnd = iota // whole frames, each a request, a one-way request or a ping
	fuzzTruncated                // then part of a frame: the end of stream comes inside it
	fuzzRefused                  // then a frame the server refuses (bad header, or not a client's)
)

func (e fuzzEnd) String() string {
	return [...]string{"clean", "truncated", "refused"}[e]
}

// fuzzCall is a request of the stream, which needs one reply.
type fuzzCall struct {
	seq  uint64
	echo []byte // a call of echo.Echo or fuzz.Nap in the Raw codec: the body its success must carry
	sure bool   // echo is set
}

// fuzzWant is what the server must make of a stream: the frames it handles
// (every one before the first it refuses or the end of stream cuts), and
// why it closes.
type fuzzWant struct {
	calls  []fuzzCall
	pings  []uint64
	end    fuzzEnd
	refuse func(error) bool // for fuzzRefused: whether a close error is the right one
	why    string           // and what it should be
}

// fuzzExpect parses the stream as the reactor does, against the same frame
// limit.
func fuzzExpect(stream []byte) fuzzWant {
	var w fuzzWant
	for b := stream; len(b) > 0; {
		var f protocol.Frame
		n, err := protocol.Parse(b, fuzzMaxFrame, &f)
		if err != nil {
			w.end, w.why = fuzzRefused, err.Error()
			for _, sentinel := range []error{protocol.ErrBadMagic, protocol.ErrUnsupportedVersion, protocol.ErrUnknownType, protocol.ErrFrameTooLarge} {
				if errors.Is(err, sentinel) {
					w.refuse = func(got error) bool { return errors.Is(got, sentinel) }
				}
			}
			if w.refuse == nil {
				panic(fmt.Sprintf("protocol.Parse returned an error of no known kind: %v", err))
			}
			return w
		}
		if n == 0 {
			w.end, w.why = fuzzTruncated, protocol.ErrTruncated.Error()
			return w
		}
		switch f.Type {
		case protocol.TypeRequest:
			c := fuzzCall{seq: f.Seq}
			if m := string(f.Method); f.Codec == codec.RawID && (m == "echo.Echo" || m == "fuzz.Nap") {
				body, err := f.Body, error(nil)
				if f.Flags&protocol.FlagMetadata != 0 { // the method gets what follows the block
					_, body, err = protocol.SplitMetadata(body, protocol.DefaultMaxMetadataSize)
				}
				if err == nil {
					c.echo, c.sure = bytes.Clone(body), true
				}
			}
			w.calls = append(w.calls, c)
		case protocol.TypeOneway:
		case protocol.TypePing:
			w.pings = append(w.pings, f.Seq)
		default:
			text := fmt.Sprintf("unexpected %s frame", f.Type)
			w.end, w.why = fuzzRefused, text
			w.refuse = func(got error) bool { return strings.Contains(got.Error(), text) }
			return w
		}
		b = b[n:]
	}
	w.end = fuzzClean
	return w
}

// fuzzCheckOutput checks what the server wrote against the stream: whole
// frames, each a reply to a call or a pong to a ping, the pongs in the
// order of the pings, never more answers than calls and pings. complete:
// the stream was clean and the server closed after answering it all, so
// every call and ping has its answer and no frame is cut.
func fuzzCheckOutput(t *testing.T, w fuzzWant, out []byte, complete bool) {
	t.Helper()
	var replies []protocol.Frame
	var pongs []uint64
	for b := out; len(b) > 0; {
		var f protocol.Frame
		n, err := protocol.Parse(b, 0, &f)
		if err != nil {
			t.Fatalf("the server wrote a frame that does not parse, %d bytes into its output: %v", len(out)-len(b), err)
		}
		if n == 0 {
			if complete {
				t.Fatalf("the server's output ends inside a frame (%d bytes left) after a clean stream", len(b))
			}
			break // cut by the close
		}
		switch f.Type {
		case protocol.TypeReply:
			replies = append(replies, f)
		case protocol.TypePong:
			pongs = append(pongs, f.Seq)
		default:
			t.Fatalf("the server wrote a %s frame (seq %d)", f.Type, f.Seq)
		}
		b = b[n:]
	}

	// Pongs are queued as their pings are read, in order, and frames
	// leave in the order they were queued; a close cuts the list.
	if len(pongs) > len(w.pings) || !slices.Equal(pongs, w.pings[:len(pongs)]) {
		t.Fatalf("pongs %v for the pings %v", fuzzShort(pongs), fuzzShort(w.pings))
	}
	if complete && len(pongs) != len(w.pings) {
		t.Fatalf("%d pongs for %d pings of a clean stream", len(pongs), len(w.pings))
	}

	// Replies come in the order the calls end. Seqs may repeat: a
	// successful reply first takes a call whose body it must echo, then
	// any call of its seq whose outcome the test cannot tell; an error
	// reply ("overloaded", "refused", "can't find") takes any call left.
	open := make(map[uint64][]fuzzCall)
	for _, c := range w.calls {
		open[c.seq] = append(open[c.seq], c)
	}
	take := func(seq uint64, ok func(fuzzCall) bool) bool {
		for i, c := range open[seq] {
			if ok(c) {
				open[seq] = append(open[seq][:i], open[seq][i+1:]...)
				return true
			}
		}
		return false
	}
	for _, r := range replies {
		if r.Flags&protocol.FlagError != 0 {
			continue
		}
		if !take(r.Seq, func(c fuzzCall) bool { return c.sure && r.Codec == codec.RawID && bytes.Equal(c.echo, r.Body) }) &&
			!take(r.Seq, func(c fuzzCall) bool { return !c.sure }) {
			t.Fatalf("a reply to seq %d with body %q answers no call of the stream (calls of that seq left: %d)", r.Seq, fuzzQuote(r.Body), len(open[r.Seq]))
		}
	}
	for _, r := range replies {
		if r.Flags&protocol.FlagError == 0 {
			continue
		}
		if !take(r.Seq, func(fuzzCall) bool { return true }) {
			t.Fatalf("an error reply to seq %d (%q) answers no call of the stream left unanswered", r.Seq, fuzzQuote(r.Error))
		}
	}
	if complete {
		for _, c := range w.calls {
			if left := open[c.seq]; len(left) > 0 {
				t.Fatalf("%d calls of seq %d of a clean stream never answered (%d replies for %d calls)", len(left), c.seq, len(replies), len(w.calls))
			}
		}
	}
}

// fuzzShort keeps failure messages short.
func fuzzShort(s []uint64) []uint64 { return s[:min(len(s), 20)] }

func fuzzQuote(b []byte) []byte { return b[:min(len(b), 80)] }

// fuzzCheckAfter registers the checks that run once the server is closed
// (t.Cleanup runs last first: this runs after the server's Close, when no
// reactor or worker logs any more): why the connection closed, no record
// at Error level, and no goroutine left behind.
func fuzzCheckAfter(t *testing.T, logs *fuzzLog, w fuzzWant, mode byte) {
	t.Cleanup(func() {
		closes, bad := logs.get()
		if portableDefault && len(closes) > 1 {
			// The reactor closes a connection once. The portable engine's
			// reader and writer each log how they ended: the first with
			// the reason, the other with what the close did to it (a
			// broken pipe, a use of the closed connection).
			closes = closes[:1]
		}
		if len(bad) > 0 {
			t.Errorf("the server logged at Error level: %q", bad)
		}
		switch {
		case mode&fuzzCloseBoth != 0:
			// The test went away: the server closes for whatever it met
			// first (the end of stream, a broken pipe, a bad frame).
			if len(closes) > 1 {
				t.Errorf("one connection closed %d times: %v", len(closes), closes)
			}
		case w.end == fuzzClean:
			if len(closes) > 0 {
				t.Errorf("a clean stream, half-closed, but the connection closed with %v", closes)
			}
		case len(closes) != 1:
			t.Errorf("a %s stream: the connection closed with %v, want one close for %q", w.end, closes, w.why)
		case w.end == fuzzTruncated && !errors.Is(closes[0], protocol.ErrTruncated),
			w.end == fuzzRefused && !w.refuse(closes[0]):
			t.Errorf("a %s stream: the connection closed with %v, want %q", w.end, closes[0], w.why)
		}
		fuzzNoGoroutineGrowth(t)
	})
}

// fuzzGoroutines is the number of goroutines when the first input began.
var fuzzGoroutines struct {
	once sync.Once
	n    int
}

// fuzzNoGoroutineGrowth fails if, once an input's server is closed, more
// goroutines remain than when the first input began (give or take a few
// that come and go): a goroutine left behind by every input shows after a
// few inputs. The workers of a closed server leave on their own, soon.
func fuzzNoGoroutineGrowth(t *testing.T) {
	deadline := time.Now().Add(fuzzWait)
	for n := runtime.NumGoroutine(); n > fuzzGoroutines.n+fuzzSlack; n = runtime.NumGoroutine() {
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines once the server is closed, %d when the first input began", n, fuzzGoroutines.n)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// fuzzLog is a slog handler that keeps what a server says about its
// connections: the error each one closed with (a close without an error,
// or for being idle, is not logged), and every record at Error level,
// which the server writes only for a bug of its own. It knows the
// records of both engines: the epoll reactor's, and the portable
// engine's, which the build tag rpcsteps_portable puts in its place.
type fuzzLog struct {
	mu     sync.Mutex
	closes []error
	errors []string
}

func (l *fuzzLog) Enabled(context.Context, slog.Level) bool { return true }

func (l *fuzzLog) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.Level >= slog.LevelError {
		l.errors = append(l.errors, r.Message)
	}
	switch r.Message {
	case "epollbatch: connection closed":
		err := errors.New("(no err attribute)")
		r.Attrs(func(a slog.Attr) bool {
			if e, ok := a.Value.Any().(error); ok && a.Key == "err" {
				err = e
			}
			return true
		})
		l.closes = append(l.closes, err)
	case "epollbatch: unexpected frame from a client":
		// The portable engine's close for a reply or pong from the
		// client, which says what the reactor's error says.
		typ := "(no type attribute)"
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "type" {
				typ = a.Value.String()
			}
			return true
		})
		l.closes = append(l.closes, fmt.Errorf("epollbatch: unexpected %s frame from a client", typ))
	}
	return nil
}

func (l *fuzzLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *fuzzLog) WithGroup(string) slog.Handler      { return l }

func (l *fuzzLog) get() ([]error, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.closes...), append([]string(nil), l.errors...)
}
