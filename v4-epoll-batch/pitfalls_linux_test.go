package epollbatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// Tests of the pitfalls table in chapter 4 (README.md, "The pitfalls, and
// how v4 avoids each") that no other test holds exactly: each asserts what
// its row claims.

// epollInterest returns the events that the epoll instance watching fd
// asks for it, as the kernel reports them in /proc/self/fdinfo: what the
// reactor's epoll_ctl calls left, read without touching the reactor. It
// fails the test unless exactly one epoll instance of the process watches
// fd.
func epollInterest(t *testing.T, fd int) uint32 {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	var found []uint32
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || target != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		// Lines such as "tfd:        7 events:       19 data: 70000000007  pos:0 ino:... sdev:..."
		for _, line := range strings.Split(string(info), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 || f[0] != "tfd:" || f[2] != "events:" || f[1] != strconv.Itoa(fd) {
				continue
			}
			ev, err := strconv.ParseUint(f[3], 16, 32)
			require.NoError(t, err, "fdinfo line %q", line)
			found = append(found, uint32(ev))
		}
	}
	require.Len(t, found, 1, "epoll instances watching fd %d", fd)
	return found[0]
}

// Row "a blocking frame read on the poller goroutine": a peer that sends
// half a frame and stops holds up no other connection of its reactor.
// With one reactor, a second connection's call is answered while the first
// one's frame is still incomplete; then the first frame is completed and
// answered too.
func TestReactorPartialFrameStallsNoOne(t *testing.T) {
	s, _ := newTestServer(t, WithReactors(1))
	slow := serverPair(t, s)
	other := serverPair(t, s)

	half := request(1, "echo.Echo", []byte("slow sender"))
	_, err := slow.Write(half[:len(half)/2])
	require.NoError(t, err)
	time.Sleep(20 * time.Millisecond) // the reactor has read the half frame

	for seq := uint64(1); seq <= 3; seq++ {
		_, err = other.Write(request(seq, "echo.Echo", []byte("other")))
		require.NoError(t, err)
		rr := &replyReader{nc: other}
		r, err := rr.next(time.Second)
		require.NoError(t, err, "a connection of the same reactor waits for another's partial frame")
		require.Equal(t, reply{seq: seq, body: "other"}, r)
	}

	_, err = slow.Write(half[len(half)/2:])
	require.NoError(t, err)
	rr := &replyReader{nc: slow}
	require.Equal(t, reply{seq: 1, body: "slow sender"}, rr.mustNext(t))
}

// Row "the listener file closed by GC": the seed article takes the
// listener's descriptor from an *os.File and keeps the File nowhere, so
// that a garbage collection runs its finalizer, which closes the
// descriptor the reactor still uses. v4 accepts through the listener
// itself and copies each connection's descriptor with fcntl: after
// collections that run every finalizer due, a connection accepted before
// them still works, on the same connection (no redial), and new ones are
// still accepted.
func TestServeSurvivesGC(t *testing.T) {
	s := NewServer()
	require.NoError(t, s.RegisterName("echo", echo{}))
	addr := serveForTest(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	before, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer before.Close()
	var got []byte
	require.NoError(t, before.Call(ctx, "echo.Echo", []byte("before GC"), &got))

	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // finalizers run on their own goroutine, after the collection
	}

	require.NoError(t, before.Call(ctx, "echo.Echo", []byte("after GC"), &got),
		"a connection accepted before the collections")
	require.Equal(t, "after GC", string(got))
	require.EqualValues(t, 1, before.Stats().Dials, "the connection was made again")

	for i := range 3 {
		c, err := Dial("tcp", addr, WithCodec(codec.Raw))
		require.NoError(t, err, "accepting after the collections")
		body := fmt.Sprintf("new %d", i)
		require.NoError(t, c.Call(ctx, "echo.Echo", []byte(body), &got))
		require.Equal(t, body, string(got))
		c.Close()
	}
}

// Row "spinning in LT mode when the input buffer is full": a connection
// paused by back-pressure, with requests still unread in its socket (which
// level-triggered epoll would report for ever), has neither EPOLLIN nor
// EPOLLRDHUP in its epoll interest, and the process stays quiet while it
// waits; once the methods return, every request is answered and read
// interest is back.
func TestReactorPausedConnectionIsNotPolled(t *testing.T) {
	skipOnPortable(t)
	const limit, n = 8, 200
	s, g := newTestServer(t, WithMaxInFlight(limit))
	fds := socketpair(t)
	serverFd := fds[0]
	adoptForTest(s, serverFd)
	nc := fileConn(t, fds[1])

	// 200 KiB of requests: more than the input buffer (64 KiB) holds, so
	// that bytes stay in the socket while the connection is paused.
	var all []byte
	for seq := uint64(1); seq <= n; seq++ {
		all = append(all, request(seq, "gate.Wait", bytes.Repeat([]byte{'a' + byte(seq%26)}, 1024))...)
	}
	wrote := make(chan error, 1)
	go func() { _, err := nc.Write(all); wrote <- err }()
	g.waitEntered(t, limit)
	time.Sleep(20 * time.Millisecond) // the reactor has paused the connection

	unread, err := unix.IoctlGetInt(serverFd, unix.SIOCINQ)
	require.NoError(t, err)
	require.Positive(t, unread, "no request left in the socket: the test shows nothing")
	ev := epollInterest(t, serverFd)
	t.Logf("paused: %d bytes unread in the socket, epoll interest %#x", unread, ev)
	require.Zero(t, ev&(unix.EPOLLIN|unix.EPOLLRDHUP), "read interest kept while paused")

	share := cpuShare(t, 200*time.Millisecond)
	t.Logf("CPU while paused: %.0f%% of a core", 100*share)
	require.Less(t, share, 0.5, "the reactor spins on a paused connection")
	require.Equal(t, limit, s.Stats().InFlight)

	g.open()
	rr := &replyReader{nc: nc}
	seen := make(map[uint64]bool, n)
	for range n {
		r := rr.mustNext(t)
		require.False(t, seen[r.seq], "seq %d answered twice", r.seq)
		seen[r.seq] = true
	}
	require.NoError(t, <-wrote)
	require.Eventually(t, func() bool {
		return epollInterest(t, serverFd)&unix.EPOLLIN != 0
	}, 2*time.Second, time.Millisecond, "read interest not re-armed")
}

// Row "producers writing straight to the socket when the ring is full": a
// client's callers fill its connection's ring while the server reads
// nothing; they wait for room, and once the server reads, every frame
// arrives whole and each caller's frames in the order it sent them, all
// of them written by the reactor.
func TestClientFullRingKeepsOrder(t *testing.T) {
	skipOnPortable(t)
	const producers, each = 8, 400
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- nc
	}()

	// A client of its own reactor, so that its figures are its own.
	c, err := Dial("unix", path, WithCodec(codec.Raw), WithReactors(1))
	require.NoError(t, err)
	defer c.Close()
	server, ok := <-accepted
	require.True(t, ok)
	defer server.Close()
	c.mu.Lock()
	r := c.slots[0].conn.(*clientConn).c.ring
	c.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := make(chan error, producers*each)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range each {
				body := fmt.Appendf(nil, "%d/%d/", p, i)
				body = append(body, bytes.Repeat([]byte{'x'}, 1024-len(body))...)
				if err := c.Notify(ctx, "sink.Put", body); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	// The server reads nothing: the socket fills, then the reactor's
	// frames waiting for writev (up to 1,024), then the ring, which stays
	// full while the producers wait for room.
	require.Eventually(t, func() bool {
		if r.Len() != r.Cap() {
			return false
		}
		time.Sleep(20 * time.Millisecond)
		return r.Len() == r.Cap()
	}, 10*time.Second, time.Millisecond, "the ring never stayed full")

	next := make([]int, producers)
	buf := make([]byte, 0, 64<<10)
	for total := 0; total < producers*each; total++ {
		var f protocol.Frame
		for {
			k, err := protocol.Parse(buf, 0, &f)
			require.NoError(t, err, "a frame arrived broken after %d whole ones", total)
			if k > 0 {
				body := string(f.Body)
				parts := strings.SplitN(body, "/", 3)
				require.Len(t, parts, 3, "frame %d: body %.40q", total, body)
				p, err1 := strconv.Atoi(parts[0])
				i, err2 := strconv.Atoi(parts[1])
				require.NoError(t, errors.Join(err1, err2), "frame %d: body %.40q", total, body)
				require.Equal(t, "sink.Put", string(f.Method))
				require.Equal(t, next[p], i, "producer %d: frame %d arrived out of order", p, i)
				require.Len(t, body, 1024)
				next[p]++
				buf = buf[:copy(buf, buf[k:])]
				break
			}
			if len(buf) == cap(buf) {
				buf = append(buf, make([]byte, len(buf))...)[:len(buf)]
			}
			server.SetReadDeadline(time.Now().Add(10 * time.Second))
			m, err := server.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+m]
			require.NoError(t, err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	for p, n := range next {
		require.Equal(t, each, n, "producer %d", p)
	}
	require.EqualValues(t, producers*each, c.Stats().Frames, "frames that did not go through the reactor's writev")
}
