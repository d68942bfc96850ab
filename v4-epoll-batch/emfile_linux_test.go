package epollbatch

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// lockedBuffer is a log destination that the test may read while the
// server writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Out of descriptors, the acceptor pauses instead of spinning on the
// connection that level-triggered epoll keeps reporting, says so in the
// log, and accepts the waiting connections once descriptors are back.
//
// The test lowers the soft RLIMIT_NOFILE of the whole process for about
// 300 ms: it must not run in parallel with other tests.
func TestAcceptPausesOnEMFILE(t *testing.T) {
	var logs lockedBuffer
	s := NewServer(WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	require.NoError(t, s.RegisterName("echo", echo{}))
	addr := serveForTest(t, s)
	tcp, err := net.ResolveTCPAddr("tcp", addr)
	require.NoError(t, err)
	sa := &unix.SockaddrInet4{Port: tcp.Port}
	copy(sa.Addr[:], tcp.IP.To4())

	// The clients' sockets are made first: connecting needs no new
	// descriptor once the limit is down. They block (no SOCK_NONBLOCK):
	// connect returns once the kernel has completed the handshake, before
	// the server accepts.
	const waiting = 3 // connections the server cannot accept
	socks := make([]int, 1+waiting)
	for i := range socks {
		socks[i], err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		fd := socks[i]
		t.Cleanup(func() { unix.Close(fd) })
	}

	// The lowest free descriptor number: the server may accept one
	// connection (it gets that number), and no more.
	free, err := unix.Dup(0)
	require.NoError(t, err)
	unix.Close(free)
	var old unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &old))
	restore := sync.OnceFunc(func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			panic(fmt.Sprintf("restoring RLIMIT_NOFILE: %v", err)) // the rest of the tests would fail strangely
		}
	})
	t.Cleanup(restore)
	low := old
	low.Cur = uint64(free + 1)
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &low))

	for _, fd := range socks {
		if err := unix.Connect(fd, sa); err != nil {
			restore()
			t.Fatalf("connect: %v", err)
		}
	}
	time.Sleep(20 * time.Millisecond) // the acceptor takes one and runs out
	share := cpuShare(t, 300*time.Millisecond)
	conns := s.Stats().Conns
	restore()

	failed := logs.String()
	t.Logf("CPU while out of descriptors: %.0f%% of a core; log:\n%s", 100*share, failed)
	require.Less(t, share, 0.5, "the acceptor spins while out of descriptors")
	// Each failed accept is logged with the pause that follows it: a few
	// of them, each pause twice the one before (capped at a second), or
	// 5 ms again after an accept that succeeded. A spinning acceptor would
	// log thousands.
	pauses := regexp.MustCompile(`msg="epollbatch: accept failed; pausing".* pause=(\S+)`).FindAllStringSubmatch(failed, -1)
	require.GreaterOrEqual(t, len(pauses), 3, "failed accepts while out of descriptors for 300 ms")
	require.LessOrEqual(t, len(pauses), 20, "failed accepts while out of descriptors for 300 ms")
	prev := time.Duration(0)
	for i, m := range pauses {
		d, err := time.ParseDuration(m[1])
		require.NoError(t, err)
		if d != 5*time.Millisecond {
			require.Equal(t, min(2*prev, time.Second), d, "pause %d after %v", i, prev)
		}
		prev = d
	}
	// One descriptor was free (more if another one was closed meanwhile):
	// the others wait.
	require.Less(t, conns, len(socks), "connections accepted while out of descriptors")
	require.Contains(t, logs.String(), "accept failed; pausing")
	require.Contains(t, logs.String(), unix.EMFILE.Error())

	// Descriptors are back: the waiting connections are accepted within the
	// pause (at most a second), and all of them are served.
	require.Eventually(t, func() bool { return s.Stats().Conns == len(socks) }, 2*time.Second, time.Millisecond)
	for i, fd := range socks {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		require.NoError(t, err)
		nc := fileConn(t, dup)
		body := fmt.Sprintf("conn %d", i)
		_, err = nc.Write(request(uint64(i+1), "echo.Echo", []byte(body)))
		require.NoError(t, err)
		rr := &replyReader{nc: nc}
		require.Equal(t, reply{seq: uint64(i + 1), body: body}, rr.mustNext(t))
	}
	require.False(t, strings.Contains(logs.String(), "level=ERROR"), "errors logged")
}
