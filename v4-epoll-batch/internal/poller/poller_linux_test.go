package poller

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// long bounds a Wait that is expected to return soon, so that a bug fails
// the test instead of hanging it.
const long = 2 * time.Second

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := New()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, p.Close()) })
	return p
}

// socketpair returns a connected pair of non-blocking AF_UNIX stream sockets,
// closed at the end of the test unless the test closes them first.
func socketpair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { closeQuietly(fds[0]); closeQuietly(fds[1]) })
	return fds[0], fds[1]
}

// tcpPair returns the two ends of a real TCP connection over loopback, both
// non-blocking: client and the server's accepted socket.
func tcpPair(t *testing.T) (client, server int) {
	t.Helper()
	const flags = unix.SOCK_NONBLOCK | unix.SOCK_CLOEXEC
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|flags, 0)
	require.NoError(t, err)
	defer unix.Close(ln)
	require.NoError(t, unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}))
	require.NoError(t, unix.Listen(ln, 1))
	sa, err := unix.Getsockname(ln)
	require.NoError(t, err)

	client, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|flags, 0)
	require.NoError(t, err)
	t.Cleanup(func() { closeQuietly(client) })
	err = unix.Connect(client, sa)
	if err != nil {
		require.ErrorIs(t, err, unix.EINPROGRESS)
	}

	// Wait for the connection to be ready to accept, with a poller: a fine
	// use of what is under test.
	p := newPoller(t)
	require.NoError(t, p.Add(ln, Readable, 1))
	evs := make([]Event, 1)
	n, _, err := p.Wait(evs, long)
	require.NoError(t, err)
	require.Equal(t, 1, n, "no connection to accept")
	server, _, err = unix.Accept4(ln, flags)
	require.NoError(t, err)
	t.Cleanup(func() { closeQuietly(server) })
	return client, server
}

func closeQuietly(fd int) { _ = unix.Close(fd) }

func write(t *testing.T, fd int, s string) {
	t.Helper()
	n, err := unix.Write(fd, []byte(s))
	require.NoError(t, err)
	require.Equal(t, len(s), n)
}

// waitOne waits for exactly one event and returns it.
func waitOne(t *testing.T, p *Poller, timeout time.Duration) Event {
	t.Helper()
	evs := make([]Event, 4)
	n, woken, err := p.Wait(evs, timeout)
	require.NoError(t, err)
	require.False(t, woken)
	require.Equal(t, 1, n, "want exactly one event, got %v", evs[:n])
	return evs[0]
}

// waitNone checks that no event is ready now.
func waitNone(t *testing.T, p *Poller) {
	t.Helper()
	evs := make([]Event, 4)
	n, woken, err := p.Wait(evs, 0)
	require.NoError(t, err)
	require.False(t, woken)
	require.Zero(t, n, "want no event, got %v", evs[:n])
}

func TestReadableIsLevelTriggered(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	require.NoError(t, p.Add(a, Readable, 42))
	waitNone(t, p)

	write(t, b, "hello")
	ev := waitOne(t, p, long)
	require.Equal(t, Event{Data: 42, Readable: true}, ev)

	// Not reading: level-triggered means we are told again, and again.
	require.Equal(t, ev, waitOne(t, p, 0))
	require.Equal(t, ev, waitOne(t, p, 0))

	// Reading some but not all: still readable.
	buf := make([]byte, 2)
	_, err := unix.Read(a, buf)
	require.NoError(t, err)
	require.Equal(t, ev, waitOne(t, p, 0))

	// Reading everything: quiet.
	buf = make([]byte, 64)
	n, err := unix.Read(a, buf)
	require.NoError(t, err)
	require.Equal(t, "llo", string(buf[:n]))
	waitNone(t, p)
}

func TestWritableOnOffWithMod(t *testing.T) {
	p := newPoller(t)
	a, _ := socketpair(t)

	// Only Readable asked: an empty send buffer is not reported.
	require.NoError(t, p.Add(a, Readable, 7))
	waitNone(t, p)

	// Writable on: reported at once, and at every Wait (level-triggered).
	require.NoError(t, p.Mod(a, Readable|Writable, 8))
	require.Equal(t, Event{Data: 8, Writable: true}, waitOne(t, p, 0))
	require.Equal(t, Event{Data: 8, Writable: true}, waitOne(t, p, 0))

	// Writable off again: quiet.
	require.NoError(t, p.Mod(a, Readable, 9))
	waitNone(t, p)
}

func TestWritableAfterBufferFull(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	require.NoError(t, unix.SetsockoptInt(a, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))

	// Fill a's send buffer (and b's receive queue) until the kernel says EAGAIN.
	chunk := make([]byte, 1024)
	for {
		_, err := unix.Write(a, chunk)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		require.NoError(t, err)
	}
	require.NoError(t, p.Add(a, Writable, 1))
	waitNone(t, p)

	// The peer drains: a becomes writable.
	for {
		_, err := unix.Read(b, chunk)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		require.NoError(t, err)
	}
	require.Equal(t, Event{Data: 1, Writable: true}, waitOne(t, p, long))
}

func TestDelStopsEvents(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	require.NoError(t, p.Add(a, Readable|Writable, 1))
	write(t, b, "x")
	require.Equal(t, Event{Data: 1, Readable: true, Writable: true}, waitOne(t, p, long))

	require.NoError(t, p.Del(a))
	waitNone(t, p)

	require.ErrorIs(t, p.Del(a), unix.ENOENT, "Del of an fd not registered")
	require.ErrorIs(t, p.Mod(a, Readable, 1), unix.ENOENT, "Mod of an fd not registered")
	require.NoError(t, p.Add(a, Readable, 2))
	require.ErrorIs(t, p.Add(a, Readable, 2), unix.EEXIST, "Add twice")
	require.Error(t, p.Add(b, Readable, wakeData), "reserved data word")
}

func TestClosingFdRemovesIt(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	require.NoError(t, p.Add(a, Readable, 1))
	write(t, b, "x")
	waitOne(t, p, long)
	require.NoError(t, unix.Close(a))
	waitNone(t, p)
}

func TestRDHupOnHalfClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(*testing.T) (int, int)
	}{
		{"unix", socketpair},
		{"tcp", tcpPair},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPoller(t)
			a, b := tc.pair(t)
			require.NoError(t, p.Add(a, Readable|RDHup, 1))

			// The peer sends its last bytes and shuts down its writing side.
			write(t, b, "bye")
			require.NoError(t, unix.Shutdown(b, unix.SHUT_WR))

			// Readable and RDHup together while the data remains. Over TCP
			// the data and the FIN may arrive in two steps: wait for both.
			var ev Event
			for deadline := time.Now().Add(long); time.Now().Before(deadline); {
				if ev = waitOne(t, p, long); ev.RDHup {
					break
				}
			}
			require.Equal(t, Event{Data: 1, Readable: true, RDHup: true}, ev)

			buf := make([]byte, 64)
			n, err := unix.Read(a, buf)
			require.NoError(t, err)
			require.Equal(t, "bye", string(buf[:n]))

			// Data gone: still readable (a read returns EOF), still RDHup,
			// but not Hup: a can still write to b.
			require.Equal(t, Event{Data: 1, Readable: true, RDHup: true}, waitOne(t, p, 0))
			n, err = unix.Read(a, buf)
			require.NoError(t, err)
			require.Zero(t, n, "EOF")
			write(t, a, "still open this way")
		})
	}
}

func TestHupWhenPeerCloses(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	require.NoError(t, p.Add(a, 0, 1)) // no interest at all: HUP comes anyway
	waitNone(t, p)
	require.NoError(t, unix.Close(b))
	require.Equal(t, Event{Data: 1, Hup: true}, waitOne(t, p, long))
}

func TestErrOnReset(t *testing.T) {
	p := newPoller(t)
	a, b := tcpPair(t)
	require.NoError(t, p.Add(a, Readable|RDHup, 1))
	// Linger with a zero timeout: close sends a reset instead of a FIN.
	require.NoError(t, unix.SetsockoptLinger(b, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}))
	require.NoError(t, unix.Close(b))

	ev := waitOne(t, p, long)
	require.True(t, ev.Err, "%+v", ev)
	require.True(t, ev.Hup, "%+v", ev)
	_, err := unix.Read(a, make([]byte, 8))
	require.ErrorIs(t, err, unix.ECONNRESET)
}

func TestWakeUnblocksWait(t *testing.T) {
	p := newPoller(t)
	type result struct {
		n     int
		woken bool
		err   error
	}
	done := make(chan result, 1)
	go func() {
		n, woken, err := p.Wait(make([]Event, 4), -1)
		done <- result{n, woken, err}
	}()
	time.Sleep(20 * time.Millisecond) // let it block, most likely
	require.NoError(t, p.Wake())
	select {
	case r := <-done:
		require.Equal(t, result{0, true, nil}, r)
	case <-time.After(long):
		t.Fatal("Wake did not unblock Wait")
	}
	waitNone(t, p) // the wake-up was consumed
}

func TestWakesCollapse(t *testing.T) {
	p := newPoller(t)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				require.NoError(t, p.Wake())
			}
		})
	}
	wg.Wait()

	n, woken, err := p.Wait(make([]Event, 4), 0)
	require.NoError(t, err)
	require.True(t, woken)
	require.Zero(t, n)
	waitNone(t, p)
}

func TestWakeWithEvents(t *testing.T) {
	// A wake-up does not take a slot of the caller's slice.
	p := newPoller(t)
	a, b := socketpair(t)
	write(t, b, "x")
	write(t, a, "x")
	require.NoError(t, p.Add(a, Readable, 1))
	require.NoError(t, p.Add(b, Readable, 2))
	require.NoError(t, p.Wake())

	evs := make([]Event, 2)
	n, woken, err := p.Wait(evs, long)
	require.NoError(t, err)
	require.True(t, woken)
	require.Equal(t, 2, n)
	require.ElementsMatch(t, []Event{{Data: 1, Readable: true}, {Data: 2, Readable: true}}, evs)
}

func TestWaitTimeout(t *testing.T) {
	p := newPoller(t)
	start := time.Now()
	n, woken, err := p.Wait(make([]Event, 4), 30*time.Millisecond)
	require.NoError(t, err)
	require.False(t, woken)
	require.Zero(t, n)
	require.GreaterOrEqual(t, time.Since(start), 25*time.Millisecond)

	_, _, err = p.Wait(nil, 0)
	require.Error(t, err, "empty slice")
}

func TestMsec(t *testing.T) {
	require.Equal(t, -1, msec(-1))
	require.Equal(t, 0, msec(0))
	require.Equal(t, 1, msec(time.Nanosecond))
	require.Equal(t, 1, msec(time.Millisecond))
	require.Equal(t, 2, msec(time.Millisecond+1))
	require.Equal(t, 1<<31-1, msec(1000*time.Hour))
}

func TestWaitDoesNotAllocate(t *testing.T) {
	p := newPoller(t)
	a, b := socketpair(t)
	write(t, b, "x")
	require.NoError(t, p.Add(a, Readable|Writable|RDHup, 1))
	evs := make([]Event, 16)
	_, _, err := p.Wait(evs, 0) // the first Wait makes the internal buffer
	require.NoError(t, err)

	allocs := testing.AllocsPerRun(100, func() {
		if err := p.Wake(); err != nil {
			panic(err)
		}
		n, woken, err := p.Wait(evs, 0)
		if err != nil || n != 1 || !woken {
			panic("unexpected Wait result")
		}
	})
	require.Zero(t, allocs)
}

func TestCloseIdempotentAndWakeAfterClose(t *testing.T) {
	p, err := New()
	require.NoError(t, err)
	a, _ := socketpair(t)
	require.NoError(t, p.Close())
	require.NoError(t, p.Close())

	require.ErrorIs(t, p.Wake(), ErrClosed)
	_, _, err = p.Wait(make([]Event, 1), 0)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, p.Add(a, Readable, 1), ErrClosed)
	require.ErrorIs(t, p.Mod(a, Readable, 1), ErrClosed)
	require.ErrorIs(t, p.Del(a), ErrClosed)
}

func TestCloseRacesWithWake(t *testing.T) {
	// Run with -race. Wakes from many goroutines while Close runs: each
	// succeeds or returns ErrClosed, and none touches a closed fd.
	for range 20 {
		p, err := New()
		require.NoError(t, err)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 4 {
			wg.Go(func() {
				<-start
				for range 50 {
					if err := p.Wake(); err != nil {
						require.ErrorIs(t, err, ErrClosed)
						return
					}
				}
			})
		}
		close(start)
		require.NoError(t, p.Close())
		wg.Wait()
	}
}

func TestCloseUnblocksWait(t *testing.T) {
	// A reactor loop in one goroutine, Close from another. The first round
	// lets Wait block first; the others race Close with the loop, which
	// once made the loop consume Close's wake-up and block again.
	for i := range 50 {
		p, err := New()
		require.NoError(t, err)
		waitErr := make(chan error, 1)
		go func() {
			evs := make([]Event, 4)
			for { // a reactor loop that only stops when the Poller is closed
				if _, _, err := p.Wait(evs, -1); err != nil {
					waitErr <- err
					return
				}
			}
		}()
		if i == 0 {
			time.Sleep(20 * time.Millisecond) // let it block, most likely
		}

		closed := make(chan error, 1)
		go func() { closed <- p.Close() }()
		select {
		case err := <-closed:
			require.NoError(t, err)
		case <-time.After(long):
			t.Fatal("Close did not return while Wait was blocked")
		}
		select {
		case err := <-waitErr:
			require.ErrorIs(t, err, ErrClosed)
		case <-time.After(long):
			t.Fatal("Wait loop did not stop after Close")
		}
	}
}

// More ready descriptors than the caller's slice holds: Wait fills the
// slice, drops nothing for good (level-triggered: the rest come next
// time), and never writes past it.
func TestMoreReadyThanEvents(t *testing.T) {
	p := newPoller(t)
	const ready = 9
	for i := range ready {
		a, b := socketpair(t)
		_, err := unix.Write(b, []byte("x"))
		require.NoError(t, err)
		require.NoError(t, p.Add(a, Readable, uint64(i)))
	}
	evs := make([]Event, 4)
	seen := map[uint64]bool{}
	for range 10 {
		n, woken, err := p.Wait(evs, 0)
		require.NoError(t, err)
		require.False(t, woken)
		require.Equal(t, 4, n, "a full slice each time: all 9 stay ready")
		for _, ev := range evs[:n] {
			seen[ev.Data] = true
		}
	}
	require.NotEmpty(t, seen)
}
