package epollbatch

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// The reactor's own tests: one end of a socketpair is handed to a serving
// server's reactor (adoptForTest), and the test drives the other end by
// hand, frame by frame or byte by byte.

// gate holds its calls until released, and counts how many run at once.
type gate struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once

	running, maxRunning atomic.Int32
}

func newGate() *gate {
	return &gate{entered: make(chan struct{}, 1<<16), release: make(chan struct{})}
}

// Wait replies with its arguments once the gate is open.
func (g *gate) Wait(args []byte, reply *[]byte) error {
	n := g.running.Add(1)
	for {
		m := g.maxRunning.Load()
		if n <= m || g.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	g.entered <- struct{}{}
	<-g.release
	g.running.Add(-1)
	*reply = append((*reply)[:0], args...)
	return nil
}

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

// waitEntered waits until n calls have entered the gate.
func (g *gate) waitEntered(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(2 * time.Second)
	for range n {
		select {
		case <-g.entered:
		case <-timeout:
			t.Fatalf("fewer than %d calls entered the gate", n)
		}
	}
}

// counter is echo that counts its calls.
type counter struct{ calls atomic.Int64 }

func (c *counter) Echo(args []byte, reply *[]byte) error {
	c.calls.Add(1)
	*reply = append((*reply)[:0], args...)
	return nil
}

// newTestServer makes a server with the echo and gate services and serves
// it (so that its reactors exist).
func newTestServer(t *testing.T, opts ...ServerOption) (*Server, *gate) {
	t.Helper()
	s := NewServer(opts...)
	g := newGate()
	require.NoError(t, s.RegisterName("echo", echo{}))
	require.NoError(t, s.RegisterName("gate", g))
	serveForTest(t, s)
	t.Cleanup(g.open) // before the server's Close (cleanups run last first)
	return s, g
}

// socketpair returns a connected pair of non-blocking AF_UNIX stream
// sockets.
func socketpair(t testing.TB) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	return fds
}

// fileConn wraps fd in a net.Conn (which takes a copy of it) and closes fd.
func fileConn(t testing.TB, fd int) net.Conn {
	t.Helper()
	f := os.NewFile(uintptr(fd), "test end")
	nc, err := net.FileConn(f)
	f.Close()
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return nc
}

// serverPair hands one end of a new socketpair to s's reactor and returns
// the test's end.
func serverPair(t *testing.T, s *Server) *net.UnixConn {
	t.Helper()
	fds := socketpair(t)
	adoptForTest(s, fds[0])
	return fileConn(t, fds[1]).(*net.UnixConn)
}

// request encodes a request of seq calling method with body (Raw codec).
func request(seq uint64, method string, body []byte) []byte {
	b, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, seq, codec.Raw, method, body)
	if err != nil {
		panic(err)
	}
	return b
}

// reply is a decoded reply.
type reply struct {
	seq  uint64
	body string
	err  string // the error text of a reply carrying FlagError
}

// replyReader reads reply frames from the test's end.
type replyReader struct {
	nc  net.Conn
	buf []byte
	r   int
}

// next returns the next reply, or the read error (a timeout after d).
func (rr *replyReader) next(d time.Duration) (reply, error) {
	rr.nc.SetReadDeadline(time.Now().Add(d))
	for {
		var f protocol.Frame
		k, err := protocol.Parse(rr.buf[rr.r:], 0, &f)
		if err != nil {
			return reply{}, err
		}
		if k > 0 {
			rr.r += k
			if f.Type != protocol.TypeReply {
				return reply{}, fmt.Errorf("got a %s frame, want a reply", f.Type)
			}
			return reply{seq: f.Seq, body: string(f.Body), err: string(f.Error)}, nil
		}
		if rr.r > 0 {
			rr.buf = append(rr.buf[:0], rr.buf[rr.r:]...)
			rr.r = 0
		}
		if len(rr.buf) == cap(rr.buf) {
			rr.buf = append(rr.buf, make([]byte, max(4096, len(rr.buf)))...)[:len(rr.buf)]
		}
		n, err := rr.nc.Read(rr.buf[len(rr.buf):cap(rr.buf)])
		rr.buf = rr.buf[:len(rr.buf)+n]
		if err != nil && n == 0 {
			return reply{}, err
		}
	}
}

func (rr *replyReader) mustNext(t *testing.T) reply {
	t.Helper()
	r, err := rr.next(2 * time.Second)
	require.NoError(t, err)
	return r
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru unix.Rusage
	require.NoError(t, unix.Getrusage(unix.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuShare measures the share of one core the process uses during d.
func cpuShare(t *testing.T, d time.Duration) float64 {
	t.Helper()
	start, c0 := time.Now(), cpuTime(t)
	time.Sleep(d)
	return float64(cpuTime(t)-c0) / float64(time.Since(start))
}

// A request written one byte at a time, with pauses, is reassembled: every
// read of the reactor brings one byte.
func TestReactorByteAtATime(t *testing.T) {
	s, _ := newTestServer(t)
	nc := serverPair(t, s)
	rr := &replyReader{nc: nc}

	for seq := uint64(1); seq <= 2; seq++ {
		body := fmt.Sprintf("byte by byte %d", seq)
		for _, b := range request(seq, "echo.Echo", []byte(body)) {
			_, err := nc.Write([]byte{b})
			require.NoError(t, err)
			time.Sleep(200 * time.Microsecond)
		}
		require.Equal(t, reply{seq: seq, body: body}, rr.mustNext(t))
	}
}

// Many frames in one write are all answered, each exactly once: more than
// the frames one event handles (64) and than the requests one connection
// may have in flight, so reading stops and resumes on the way. With a
// large buffer, the whole write is read at once, and the frames left in
// the buffer when reading stops must be handed over when it resumes: the
// socket has nothing more to report.
func TestReactorManyFramesInOneWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []ServerOption
	}{
		{"defaults", nil},
		{"all buffered", []ServerOption{WithBufferSize(256 << 10), WithMaxInFlight(8)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestServer(t, tc.opts...)
			nc := serverPair(t, s)
			const n = 2000
			var all []byte
			for seq := uint64(1); seq <= n; seq++ {
				all = append(all, request(seq, "echo.Echo", fmt.Appendf(nil, "r%d", seq))...)
			}
			wrote := make(chan error, 1)
			go func() { _, err := nc.Write(all); wrote <- err }()

			rr := &replyReader{nc: nc}
			seen := make(map[uint64]bool, n)
			for range n {
				r := rr.mustNext(t)
				require.Empty(t, r.err)
				require.Equal(t, fmt.Sprintf("r%d", r.seq), r.body)
				require.False(t, seen[r.seq], "seq %d answered twice", r.seq)
				seen[r.seq] = true
			}
			require.NoError(t, <-wrote)
			_, err := rr.next(20 * time.Millisecond)
			require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a reply more than requested")

			// The connection is still registered: a request written later,
			// once everything before it is answered, is answered too.
			_, err = nc.Write(request(n+1, "echo.Echo", []byte("later")))
			require.NoError(t, err)
			require.Equal(t, reply{seq: n + 1, body: "later"}, rr.mustNext(t))
			require.Equal(t, 1, s.Stats().Conns)
		})
	}
}

// Half-close is "no more requests", not "close now": the reply of the call
// in flight still arrives, and then the server closes.
func TestReactorHalfCloseWithReplyPending(t *testing.T) {
	s, g := newTestServer(t)
	nc := serverPair(t, s)
	_, err := nc.Write(request(7, "gate.Wait", []byte("pending")))
	require.NoError(t, err)
	g.waitEntered(t, 1)
	require.NoError(t, nc.CloseWrite())

	time.Sleep(30 * time.Millisecond) // the reactor sees the end of stream
	require.Equal(t, 1, s.Stats().Conns, "closed with a reply pending")
	g.open()

	rr := &replyReader{nc: nc}
	require.Equal(t, reply{seq: 7, body: "pending"}, rr.mustNext(t))
	_, err = rr.next(2 * time.Second)
	require.ErrorIs(t, err, io.EOF, "the server should close once the reply is out")
	require.Eventually(t, func() bool { return s.Stats().Conns == 0 }, 2*time.Second, time.Millisecond)
}

// A peer that closes (both ways) while its call runs: the reactor must not
// spin while it waits for the method. On a Unix socket the closed peer is
// EPOLLHUP, which epoll reports whatever the interest set.
func TestReactorPeerCloseWithReplyPendingDoesNotSpin(t *testing.T) {
	s, g := newTestServer(t)
	nc := serverPair(t, s)
	_, err := nc.Write(request(1, "gate.Wait", []byte("pending")))
	require.NoError(t, err)
	g.waitEntered(t, 1)
	require.NoError(t, nc.Close())
	time.Sleep(20 * time.Millisecond) // the reactor sees the end of stream

	share := cpuShare(t, 300*time.Millisecond)
	t.Logf("CPU while the method runs: %.0f%% of a core", 100*share)
	if !portableDefault {
		// The reactor closes the connection on the hang-up, while the
		// method still runs: that is what stops epoll reporting it. (The
		// portable engine's reader, which epoll does not drive, waits for
		// the reply.)
		require.Equal(t, 0, s.Stats().Conns, "the reactor kept a connection whose peer hung up")
	}
	g.open()
	require.Eventually(t, func() bool { return s.Stats().Conns == 0 }, 2*time.Second, time.Millisecond)
	require.Less(t, share, 0.5, "the reactor spins on a closed peer while a method runs")
	// The reply that had nowhere to go is no longer in flight.
	require.Eventually(t, func() bool { return s.Stats().WorkersBusy == 0 }, 2*time.Second, time.Millisecond)
	require.Zero(t, s.Stats().InFlight)
}

// The same on TCP, with a peer that resets the connection (SO_LINGER 0)
// while its call runs and the server has stopped reading it for
// back-pressure: EPOLLERR and EPOLLHUP come whatever the interest set.
func TestReactorPeerResetWhilePausedDoesNotSpin(t *testing.T) {
	s := NewServer(WithMaxInFlight(1))
	g := newGate()
	require.NoError(t, s.RegisterName("gate", g))
	addr := serveForTest(t, s)
	t.Cleanup(g.open)
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.Write(request(1, "gate.Wait", []byte("pending")))
	require.NoError(t, err)
	g.waitEntered(t, 1)
	require.NoError(t, nc.(*net.TCPConn).SetLinger(0))
	require.NoError(t, nc.Close()) // RST
	time.Sleep(20 * time.Millisecond)

	share := cpuShare(t, 300*time.Millisecond)
	t.Logf("CPU while the method runs: %.0f%% of a core", 100*share)
	if !portableDefault {
		// Closed on the reset, while the method still runs. (The portable
		// engine's reader, paused in admit, does not read the reset until
		// the reply.)
		require.Equal(t, 0, s.Stats().Conns, "the reactor kept a connection its peer reset")
	}
	g.open()
	require.Eventually(t, func() bool { return s.Stats().Conns == 0 }, 2*time.Second, time.Millisecond)
	require.Less(t, share, 0.5, "the reactor spins on a reset peer while a method runs")
}

// fdFree reports whether no descriptor has the number fd.
func fdFree(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == unix.EBADF
}

// A new connection that gets the descriptor number of a closed one starts
// clean: the old one's partial frame is not in its buffer, and the reply of
// the old one's call, which ends after the close, does not reach it.
func TestReactorFdReuse(t *testing.T) {
	s, g := newTestServer(t, WithReactors(1))

	// The old connection: a call held in the gate, then half a frame, then
	// the peer goes away. The server closes at once (a truncated frame),
	// with the call still running.
	fds := socketpair(t)
	oldFd := fds[0]
	adoptForTest(s, oldFd)
	old := fileConn(t, fds[1])
	_, err := old.Write(request(1, "gate.Wait", []byte("old reply")))
	require.NoError(t, err)
	g.waitEntered(t, 1)
	partial := request(2, "echo.Echo", bytes.Repeat([]byte("x"), 100))
	_, err = old.Write(partial[:len(partial)/2])
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond) // the reactor buffers the half frame
	require.NoError(t, old.Close())
	require.Eventually(t, func() bool { return s.Stats().Conns == 0 && fdFree(oldFd) }, 2*time.Second, time.Millisecond)

	// The new connection, on the same descriptor number.
	fds = socketpair(t)
	if fds[1] == oldFd {
		fds[0], fds[1] = fds[1], fds[0]
	}
	if fds[0] != oldFd {
		require.True(t, fdFree(oldFd), "descriptor %d taken meanwhile", oldFd)
		_, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0)
		require.NoError(t, err)
		require.NoError(t, unix.Dup3(fds[0], oldFd, unix.O_CLOEXEC))
		unix.Close(fds[0])
		fds[0] = oldFd
	}
	adoptForTest(s, oldFd)
	nc := fileConn(t, fds[1])
	rr := &replyReader{nc: nc}
	_, err = nc.Write(request(1, "echo.Echo", []byte("new reply")))
	require.NoError(t, err)
	require.Equal(t, reply{seq: 1, body: "new reply"}, rr.mustNext(t))

	// The old call ends now; its reply must go nowhere.
	g.open()
	require.Eventually(t, func() bool { return s.Stats().WorkersBusy == 0 }, 2*time.Second, time.Millisecond)
	time.Sleep(10 * time.Millisecond)
	_, err = nc.Write(request(2, "echo.Echo", []byte("again")))
	require.NoError(t, err)
	require.Equal(t, reply{seq: 2, body: "again"}, rr.mustNext(t))
	require.Equal(t, 1, s.Stats().Conns)
}

// A server connection borrows a ring only while it has requests in
// flight: an idle one holds none (10,000 idle connections would otherwise
// hold 10,000 rings), and the ring goes back once the replies are written.
func TestReactorIdleConnectionHoldsNoRing(t *testing.T) {
	skipOnPortable(t)
	s, g := newTestServer(t)
	nc := serverPair(t, s)
	rr := &replyReader{nc: nc}
	require.Zero(t, ringsLent(s))

	_, err := nc.Write(request(1, "gate.Wait", []byte("busy")))
	require.NoError(t, err)
	g.waitEntered(t, 1)
	require.Equal(t, 1, ringsLent(s), "a connection with a call in flight")
	g.open()
	require.Equal(t, reply{seq: 1, body: "busy"}, rr.mustNext(t))
	require.Eventually(t, func() bool { return ringsLent(s) == 0 }, 2*time.Second, time.Millisecond)

	// Busy again: it borrows one again, and gives it back again.
	for seq := uint64(2); seq < 50; seq++ {
		_, err = nc.Write(request(seq, "echo.Echo", []byte("again")))
		require.NoError(t, err)
		require.Equal(t, reply{seq: seq, body: "again"}, rr.mustNext(t))
	}
	require.Eventually(t, func() bool { return ringsLent(s) == 0 }, 2*time.Second, time.Millisecond)
	require.Equal(t, 1, s.Stats().Conns)
}

// A frame larger than the input buffer (1 MiB against 4 KiB), written in
// pieces between two small ones, is reassembled; so are the small ones
// before and after it.
func TestReactorLargeFrameInPieces(t *testing.T) {
	s, _ := newTestServer(t)
	nc := serverPair(t, s)
	big := make([]byte, 1<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	var all []byte
	all = append(all, request(1, "echo.Echo", []byte("before"))...)
	all = append(all, request(2, "echo.Echo", big)...)
	all = append(all, request(3, "echo.Echo", []byte("after"))...)
	wrote := make(chan error, 1)
	go func() {
		const piece = 1000 // not a divisor of anything the server uses
		for i := 0; i < len(all); i += piece {
			if _, err := nc.Write(all[i:min(i+piece, len(all))]); err != nil {
				wrote <- err
				return
			}
			if i%(100*piece) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		wrote <- nil
	}()
	rr := &replyReader{nc: nc}
	got := make(map[uint64]string) // replies come in the order their calls end
	for range 3 {
		r := rr.mustNext(t)
		require.Empty(t, r.err)
		got[r.seq] = r.body
	}
	require.Equal(t, "before", got[1])
	require.True(t, got[2] == string(big), "the large reply differs from its request")
	require.Equal(t, "after", got[3])
	require.NoError(t, <-wrote)
}

// At WithMaxInFlight requests the server stops reading the connection: of
// 200 requests written at once, never more than 8 run, and all are
// answered once the gate opens.
func TestReactorBackPressureBoundsInFlight(t *testing.T) {
	const limit, n = 8, 200
	s, g := newTestServer(t, WithMaxInFlight(limit))
	nc := serverPair(t, s)
	var all []byte
	for seq := uint64(1); seq <= n; seq++ {
		all = append(all, request(seq, "gate.Wait", fmt.Appendf(nil, "g%d", seq))...)
	}
	_, err := nc.Write(all)
	require.NoError(t, err)
	g.waitEntered(t, limit)
	time.Sleep(50 * time.Millisecond) // room for a ninth, if reading went on
	require.EqualValues(t, limit, g.maxRunning.Load(), "calls running at once")
	require.Equal(t, limit, s.Stats().WorkersBusy)
	require.Equal(t, limit, s.Stats().InFlight)

	g.open()
	rr := &replyReader{nc: nc}
	seen := make(map[uint64]bool, n)
	for range n {
		r := rr.mustNext(t)
		require.Equal(t, fmt.Sprintf("g%d", r.seq), r.body)
		require.False(t, seen[r.seq], "seq %d answered twice", r.seq)
		seen[r.seq] = true
	}
	require.LessOrEqual(t, g.maxRunning.Load(), int32(limit))
	require.Eventually(t, func() bool { return s.Stats().InFlight == 0 }, 2*time.Second, time.Millisecond)
}

// Reading resumes below 7/8 of the limits, not at the limit (no flapping
// at the edge) and not at half of them (too few calls left in flight, which
// cost a 1 ms method 31% of its calls/s). Requests are counted strictly
// below 7/8, bytes at or below it. Each case fills the connection to its
// limit with calls held in the gate, lets calls finish one at a time down
// to the last count that must stay paused (no new call may start), then
// one more: reading resumes, and new calls start until the limit again.
func TestReactorBackPressureResumesAtSevenEighths(t *testing.T) {
	skipOnPortable(t)
	body := make([]byte, 1000)
	size := len(request(1, "gate.Wait", body)) // every request of this test has this size
	for _, tc := range []struct {
		name                  string
		opts                  []ServerOption
		full, paused, resumed int // calls in flight: at the limit, the fewest still paused, the first resumed
	}{
		// 7/8 of 8 is 7: paused at 7, reading at 6.
		{"8 requests", []ServerOption{WithMaxInFlight(8)}, 8, 7, 6},
		// 7/8 of 64 is 56: paused at 56, reading at 55 (half would be 32).
		{"64 requests", []ServerOption{WithMaxInFlight(64)}, 64, 56, 55},
		// 16 requests' bytes: 7/8 is 14 requests' bytes, and at most that
		// reads again: paused at 15, reading at 14.
		{"bytes of 16 requests", []ServerOption{WithMaxBytesInFlight(16 * size)}, 16, 15, 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.full + (tc.full - tc.resumed) + 10
			s, g := newTestServer(t, tc.opts...)
			nc := serverPair(t, s)
			var all []byte
			for seq := uint64(1); seq <= uint64(n); seq++ {
				all = append(all, request(seq, "gate.Wait", body)...)
			}
			wrote := make(chan error, 1)
			go func() { _, err := nc.Write(all); wrote <- err }()
			g.waitEntered(t, tc.full)
			time.Sleep(20 * time.Millisecond)
			require.Empty(t, g.entered, "more calls than the limit started")

			for range tc.full - tc.paused { // each: one call ends, its reply is written
				g.release <- struct{}{}
			}
			require.Eventually(t, func() bool { return s.Stats().InFlight == tc.paused }, 2*time.Second, time.Millisecond)
			time.Sleep(50 * time.Millisecond)
			require.Empty(t, g.entered, "reading resumed at %d of %d in flight", tc.paused, tc.full)

			g.release <- struct{}{} // one fewer: reading resumes
			g.waitEntered(t, tc.full-tc.resumed)
			require.Eventually(t, func() bool { return s.Stats().WorkersBusy == tc.full }, 2*time.Second, time.Millisecond)
			time.Sleep(20 * time.Millisecond)
			require.Empty(t, g.entered, "more calls than the limit started after resuming")

			g.open()
			rr := &replyReader{nc: nc}
			for range n {
				r := rr.mustNext(t)
				require.Empty(t, r.err)
			}
			require.NoError(t, <-wrote)
		})
	}
}

// heapInuse is the heap in use after two collections (the second frees
// what sync.Pools kept through the first).
func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// A client that writes requests as fast as it can and never reads its
// replies: once the replies fill the socket, the server stops reading
// (back-pressure), so the client's writes stall, the server handles no
// more requests, and the server's memory stays bounded.
func TestReactorClientThatNeverReads(t *testing.T) {
	s := NewServer(WithMaxInFlight(64))
	cnt := &counter{}
	require.NoError(t, s.RegisterName("count", cnt))
	serveForTest(t, s)
	nc := serverPair(t, s)

	var chunk []byte // 1 MiB of 1 KiB requests
	for seq := uint64(1); len(chunk) < 1<<20; seq++ {
		chunk = append(chunk, request(seq, "count.Echo", make([]byte, 1024))...)
	}
	before := heapInuse()
	written := 0
	deadline := time.Now().Add(400 * time.Millisecond)
	nc.SetWriteDeadline(deadline)
	for time.Now().Before(deadline) {
		n, err := nc.Write(chunk)
		written += n
		if err != nil {
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			break
		}
	}
	calls := cnt.calls.Load()
	time.Sleep(50 * time.Millisecond)
	growth := int64(heapInuse()) - int64(before)
	t.Logf("client wrote %d KiB, server ran %d calls, heap grew %d KiB", written>>10, calls, growth>>10)
	// What may be written: the socket buffers both ways (about 200 KiB
	// each), the input buffer and 64 requests and their replies.
	require.Less(t, written, 2<<20, "the server kept reading a client that does not read")
	require.Less(t, growth, int64(4<<20), "the server's memory grew with the unread replies")
	require.Equal(t, cnt.calls.Load(), calls, "the server still runs requests of a stalled client")
	require.LessOrEqual(t, calls, int64(written/1024))
}

// Many goroutines calling on one connection at once: every reply is the
// right one, and both sides batch (more frames than writev calls).
func TestRingOrderingUnderLoad(t *testing.T) {
	const callers, calls, window = 64, 500, 8
	s := NewServer()
	require.NoError(t, s.RegisterName("echo", echo{}))
	addr := serveForTest(t, s)
	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()

	ctx := context.Background()
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			done := make(chan *Call, window)
			replies := make([][]byte, calls)
			send := func(i int) {
				c.Go(ctx, "echo.Echo", fmt.Appendf(nil, "%d/%d", g, i), &replies[i], done)
			}
			next := 0
			for ; next < window; next++ {
				send(next)
			}
			for range calls {
				call := <-done
				if call.Error != nil {
					errs <- call.Error
					return
				}
				if got, want := *call.Reply.(*[]byte), call.Args.([]byte); !bytes.Equal(got, want) {
					errs <- fmt.Errorf("call %q got reply %q", want, got)
					return
				}
				if next < calls {
					send(next)
					next++
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	// The server counts a reply once its writev returns, which may be
	// after the client has read it.
	require.Eventually(t, func() bool { return s.Stats().Frames == callers*calls }, 2*time.Second, time.Millisecond)
	ss, cs := s.Stats(), c.Stats()
	t.Logf("server: %d frames in %d writes; client: %d frames in %d writes", ss.Frames, ss.Writes, cs.Frames, cs.Writes)
	require.EqualValues(t, callers*calls, cs.Frames)
	require.Greater(t, ss.Frames, ss.Writes, "the server's writes should batch replies")
	require.Less(t, cs.Writes, cs.Frames, "the client's writes should batch requests")
}

// A busy connection's ring holds a reply for every request in flight,
// up to the largest in-flight limit: a worker never waits for room.
func TestRingSizeFollowsMaxInFlight(t *testing.T) {
	for _, n := range []int{1, 64, 65, DefaultMaxInFlight, MaxInFlightCap} {
		require.GreaterOrEqual(t, ringSizeFor(n), n)
	}
	so := newServerOptions([]ServerOption{WithMaxInFlight(1 << 30)})
	require.Equal(t, MaxInFlightCap, ringSizeFor(so.maxInFlight))
}
