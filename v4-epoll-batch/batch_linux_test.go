package epollbatch

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Batches (batch.go): the requests of one read whose methods are quick
// share a worker; slow ones, and methods never run yet, get one each.

// pipelined writes the requests in one write and reads their replies.
func pipelined(t *testing.T, s *Server, reqs ...[]byte) []reply {
	t.Helper()
	nc := serverPair(t, s)
	var all []byte
	for _, r := range reqs {
		all = append(all, r...)
	}
	_, err := nc.Write(all)
	require.NoError(t, err)
	rr := &replyReader{nc: nc}
	out := make([]reply, len(reqs))
	for i := range out {
		out[i] = rr.mustNext(t)
	}
	return out
}

// With one worker, four quick requests in one write all run: they travel
// as one batch. Without batches, the three that found the worker busy
// were answered "overloaded".
func TestQuickRequestsShareAWorker(t *testing.T) {
	skipOnPortable(t)
	s, _ := newTestServer(t, WithWorkers(1))
	setCost(s, "echo.Echo", time.Microsecond)
	var reqs [][]byte
	for i := range 4 {
		reqs = append(reqs, request(uint64(i+1), "echo.Echo", []byte(fmt.Sprint("hello ", i))))
	}
	for _, r := range pipelined(t, s, reqs...) {
		require.Empty(t, r.err, "reply %d", r.seq)
		require.Equal(t, fmt.Sprint("hello ", r.seq-1), r.body)
	}
	st := s.Stats()
	require.Equal(t, int64(4), st.Requests)
	require.Equal(t, int64(1), st.Handoffs, "four requests, one hand-off")
	require.Zero(t, st.Overloaded)
}

// barrier holds each call until n calls are in at once (n is the
// argument), or fails it after two seconds: requests that share a
// worker can never all be in.
type barrier struct {
	in   atomic.Int32
	done chan struct{}
}

func (b *barrier) Meet(args []byte, reply *[]byte) error {
	var n int32
	fmt.Sscan(string(args), &n)
	if b.in.Add(1) == n {
		close(b.done)
	}
	select {
	case <-b.done:
		return nil
	case <-time.After(2 * time.Second):
		return fmt.Errorf("only %d of %d calls met", b.in.Load(), n)
	}
}

// Requests of a slow method, and of a method whose time is not known yet,
// each get a worker of their own: eight of them in one write run at once.
func TestSlowRequestsGetWorkersOfTheirOwn(t *testing.T) {
	skipOnPortable(t)
	for _, known := range []bool{false, true} {
		t.Run(fmt.Sprintf("cost known=%v", known), func(t *testing.T) {
			s, _ := newTestServer(t, WithWorkers(8))
			require.NoError(t, s.RegisterName("barrier", &barrier{done: make(chan struct{})}))
			if known {
				setCost(s, "barrier.Meet", time.Millisecond)
			}
			var reqs [][]byte
			for i := range 8 {
				reqs = append(reqs, request(uint64(i+1), "barrier.Meet", []byte("8")))
			}
			for _, r := range pipelined(t, s, reqs...) {
				require.Empty(t, r.err, "reply %d", r.seq)
			}
			require.Equal(t, int64(8), s.Stats().Handoffs)
		})
	}
}

// A batch formed on a method's past speed that runs long hands the rest
// to another worker: a "quick" method that sleeps 5 ms, then three quick
// ones behind it.
func TestLongBatchSpills(t *testing.T) {
	skipOnPortable(t)
	s, _ := newTestServer(t, WithWorkers(4))
	require.NoError(t, s.RegisterName("slow", slow{}))
	setCost(s, "slow.Sleep", time.Microsecond)
	setCost(s, "echo.Echo", time.Microsecond)
	reqs := [][]byte{request(1, "slow.Sleep", []byte("5ms"))}
	for i := range 3 {
		reqs = append(reqs, request(uint64(i+2), "echo.Echo", []byte("x")))
	}
	for _, r := range pipelined(t, s, reqs...) {
		require.Empty(t, r.err, "reply %d", r.seq)
	}
	st := s.Stats()
	require.Equal(t, int64(1), st.Spills)
	require.Equal(t, int64(2), st.Handoffs, "the batch, then its rest")
	require.Equal(t, int64(4), st.Requests)
}

// A refused batch is refused request by request: each gets its
// "overloaded" reply, and each counts.
func TestRefusedBatchAnswersEachRequest(t *testing.T) {
	skipOnPortable(t)
	s, g := newTestServer(t, WithWorkers(1))
	setCost(s, "echo.Echo", time.Microsecond)
	nc := serverPair(t, s)
	_, err := nc.Write(request(1, "gate.Wait", []byte("held")))
	require.NoError(t, err)
	g.waitEntered(t, 1) // the one worker is busy
	var all []byte
	for i := range 4 {
		all = append(all, request(uint64(i+2), "echo.Echo", []byte("x"))...)
	}
	_, err = nc.Write(all)
	require.NoError(t, err)
	rr := &replyReader{nc: nc}
	for range 4 {
		r := rr.mustNext(t)
		require.Contains(t, r.err, "overloaded", "reply %d", r.seq)
	}
	g.open()
	r := rr.mustNext(t)
	require.Equal(t, uint64(1), r.seq)
	require.Empty(t, r.err)
	require.Equal(t, int64(4), s.Stats().Overloaded)
}

// The times kept are those of methods the server has: a peer naming
// thousands of methods that do not exist adds none.
func TestCostsKeptOnlyForMethodsServed(t *testing.T) {
	skipOnPortable(t)
	s, _ := newTestServer(t)
	var reqs [][]byte
	for i := range 200 {
		reqs = append(reqs, request(uint64(i+1), fmt.Sprintf("echo.Nope%d", i), nil))
	}
	reqs = append(reqs, request(201, "echo.Echo", []byte("x")))
	for _, r := range pipelined(t, s, reqs...) {
		if r.seq <= 200 {
			require.True(t, strings.Contains(r.err, "can't find method"), "reply %d: %q", r.seq, r.err)
		}
	}
	require.Equal(t, 1, costsKept(s))
}
