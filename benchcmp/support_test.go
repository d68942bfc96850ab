package benchcmp

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Raw echoes every size, from many callers at once on one connection
// (Drive checks every reply against its request), and refuses Sleep.
func TestRaw(t *testing.T) {
	im := Raw()
	require.True(t, im.EchoOnly)
	got, err := Lookup("raw")
	require.NoError(t, err)
	require.Equal(t, "raw", got.Name)
	c := start(t, im)
	for _, size := range []int{8, 64, 4096, 300 << 10} {
		res, err := Drive(context.Background(), c, "Echo.Echo", 64, size, 2000, nil)
		require.NoError(t, err, size)
		require.EqualValues(t, 2000, res.Calls)
	}
	// 1,024 callers of 4 KiB: up to 4 MiB written at once while the
	// replies come back, which must not deadlock.
	res, err := Drive(context.Background(), c, "Echo.Echo", 1024, 4096, 20000, nil)
	require.NoError(t, err)
	require.EqualValues(t, 20000, res.Calls)
	var reply []byte
	require.ErrorContains(t, c.Call(context.Background(), "Echo.Sleep", []byte("12345678"), &reply), "echo (Echo.Echo) only")
	require.ErrorContains(t, c.Call(context.Background(), "Echo.Echo", "text", &reply), "must be []byte")
}

// Close fails the calls in flight and every later one; so does a server
// that goes away.
func TestRawClose(t *testing.T) {
	// A server that reads and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := serveConns(ln, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	defer stop()
	c, err := Raw().Dial(ln.Addr().String())
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			var reply []byte
			errs <- c.Call(context.Background(), "Echo.Echo", []byte("12345678"), &reply)
		})
	}
	time.Sleep(50 * time.Millisecond) // the calls are sent
	require.NoError(t, c.Close())
	wg.Wait()
	close(errs)
	for err := range errs {
		require.ErrorIs(t, err, errRawClosed)
	}
	var reply []byte
	require.ErrorIs(t, c.Call(context.Background(), "Echo.Echo", []byte("12345678"), &reply), errRawClosed)
	require.NoError(t, c.Close()) // twice

	// Close under load: every caller returns, with the error.
	c4 := start(t, Raw())
	driven := make(chan error, 1)
	go func() {
		_, err := Drive(context.Background(), c4, "Echo.Echo", 256, 4096, 1<<22, nil)
		driven <- err
	}()
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, c4.Close())
	select {
	case err := <-driven:
		require.ErrorIs(t, err, errRawClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("callers still waiting 10 s after Close")
	}

	// A server that answers with too long a frame fails the call, and
	// the client.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop2 := serveConns(ln2, func(c net.Conn) {
		var b [12]byte
		if _, err := io.ReadFull(c, b[:]); err == nil {
			_, _ = c.Write([]byte{0xff, 0, 0, 0})
		}
		_, _ = io.Copy(io.Discard, c)
	})
	defer stop2()
	c2, err := Raw().Dial(ln2.Addr().String())
	require.NoError(t, err)
	require.ErrorContains(t, c2.Call(context.Background(), "Echo.Echo", []byte("12345678"), &reply), "at most")
	require.ErrorContains(t, c2.Call(context.Background(), "Echo.Echo", []byte("12345678"), &reply), "at most")
	require.NoError(t, c2.Close())

	// A server that answers twice: the FIFO gives the second call the
	// first call's second reply, and the check on the payload sees it.
	ln3, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop3 := serveConns(ln3, func(c net.Conn) {
		var b [12]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			_, _ = c.Write(append(b[:], b[:]...))
		}
	})
	defer stop3()
	c3, err := Raw().Dial(ln3.Addr().String())
	require.NoError(t, err)
	_, err = Drive(context.Background(), c3, "Echo.Echo", 1, 8, 10, nil)
	require.ErrorContains(t, err, "does not match its request")
	require.NoError(t, c3.Close())
}

// A Close that lands while a reply's body is still arriving gives the
// caller the client's error, not the read's: the server sends the reply's
// length and part of its body, then nothing.
func TestRawCloseDuringABody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := serveConns(ln, func(c net.Conn) {
		var b [12]byte
		if _, err := io.ReadFull(c, b[:]); err == nil {
			_, _ = c.Write([]byte{0, 0, 0, 8, 'h', 'a', 'l'})
		}
		_, _ = io.Copy(io.Discard, c)
	})
	defer stop()
	c, err := Raw().Dial(ln.Addr().String())
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		var reply []byte
		done <- c.Call(context.Background(), "Echo.Echo", []byte("12345678"), &reply)
	}()
	time.Sleep(100 * time.Millisecond) // the length and three bytes are read; the reader waits for the rest
	require.NoError(t, c.Close())
	select {
	case err := <-done:
		require.ErrorIs(t, err, errRawClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("the call still waits 10 s after Close")
	}
}

// A Load measures its window only: the calls of the warm-up are not in
// it, OnWindow brackets it, and the latencies are sorted.
func TestLoad(t *testing.T) {
	im, err := Lookup("v3")
	require.NoError(t, err)
	c := start(t, im)
	var edges []bool
	var progress int
	l := &Load{
		Clients: []Client{c}, Method: "Echo.Echo", Callers: 8, Size: 64,
		Warmup: 100 * time.Millisecond, Window: 1100 * time.Millisecond,
		OnWindow: func(open bool) { edges = append(edges, open) },
		Progress: func(time.Duration, int64, float64) { progress++ },
	}
	res, err := l.Run(context.Background())
	require.NoError(t, err)
	require.NoError(t, res.Err())
	require.Equal(t, []bool{true, false}, edges)
	require.Equal(t, 1, progress) // at 1 s
	require.Positive(t, res.Calls)
	require.EqualValues(t, len(res.Latencies), res.Calls)
	require.GreaterOrEqual(t, res.Elapsed, 1100*time.Millisecond)
	require.Less(t, res.Elapsed, 1500*time.Millisecond)
	require.LessOrEqual(t, res.Percentile(0.5), res.Percentile(0.99))
	require.False(t, res.Interrupted)

	// A wrong reply is counted and named; MaxErrors ends the run early.
	l = &Load{Clients: []Client{brokenEcho{c}}, Method: "Echo.Echo", Callers: 4, Size: 64, Window: time.Minute, MaxErrors: 10}
	t0 := time.Now()
	res, err = l.Run(context.Background())
	require.NoError(t, err)
	require.Less(t, time.Since(t0), 10*time.Second)
	require.GreaterOrEqual(t, res.Errors, int64(10))
	require.ErrorContains(t, res.Err(), "does not match its request")
	require.Zero(t, res.Calls)

	// A done ctx interrupts it.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	l = &Load{Clients: []Client{c}, Method: "Echo.Echo", Callers: 4, Size: 64, Window: time.Minute}
	res, err = l.Run(ctx)
	require.NoError(t, err)
	require.True(t, res.Interrupted)
	require.Less(t, res.Elapsed, 10*time.Second)

	_, err = (&Load{Clients: []Client{c}, Callers: 1, Size: 4}).Run(context.Background())
	require.ErrorContains(t, err, "at least 8 bytes")
	_, err = (&Load{Callers: 1, Size: 8}).Run(context.Background())
	require.ErrorContains(t, err, "a caller and a client")
}

// ServeChild, in this process on pipes: the address first, then an answer
// to each "cpu"; a closed input ends it.
func TestServeChild(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- ServeChild(Raw(), inR, outW) }()
	out := bufio.NewReader(outR)
	addr, err := out.ReadString('\n')
	require.NoError(t, err)
	c, err := Raw().Dial(strings.TrimSpace(addr))
	require.NoError(t, err)
	_, err = Drive(context.Background(), c, "Echo.Echo", 4, 64, 100, nil)
	require.NoError(t, err)
	require.NoError(t, c.Close())

	_, err = io.WriteString(inW, "noise\ncpu\n")
	require.NoError(t, err)
	line, err := out.ReadString('\n')
	require.NoError(t, err)
	if _, _, ok := ProcessCPU(); ok {
		d, err := parseCPULine(line)
		require.NoError(t, err)
		require.Positive(t, d)
	}
	require.NoError(t, inW.Close())
	require.NoError(t, <-done)
}

func TestParseCPULine(t *testing.T) {
	d, err := parseCPULine("cpu 1500 500")
	require.NoError(t, err)
	require.Equal(t, 2000*time.Nanosecond, d)
	for line, want := range map[string]string{
		"cpu unknown":   "cannot measure",
		"cpu 1":         `want "cpu USER SYS"`,
		"127.0.0.1:80":  `want "cpu USER SYS"`,
		"cpu x 1":       "in nanoseconds",
		"cpu -5 1":      "in nanoseconds",
		"cpu 1 2 extra": `want "cpu USER SYS"`,
	} {
		_, err := parseCPULine(line)
		require.ErrorContains(t, err, want, line)
	}
}
