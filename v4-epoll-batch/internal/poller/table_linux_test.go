package poller

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestTableGeneration(t *testing.T) {
	var tb Table[string]
	_, ok := tb.Get(0)
	require.False(t, ok, "empty table")

	data1 := tb.Put(5, "a")
	require.Equal(t, 5, Fd(data1))
	v, ok := tb.Get(data1)
	require.True(t, ok)
	require.Equal(t, "a", v)
	require.Equal(t, 1, tb.Len())

	tb.Remove(5)
	_, ok = tb.Get(data1)
	require.False(t, ok, "removed")
	require.Zero(t, tb.Len())

	data2 := tb.Put(5, "b")
	require.NotEqual(t, data1, data2)
	require.Equal(t, 5, Fd(data2))
	_, ok = tb.Get(data1)
	require.False(t, ok, "stale data word after the fd got a new value")
	v, ok = tb.Get(data2)
	require.True(t, ok)
	require.Equal(t, "b", v)

	// Put over a live value replaces it, and the old word stops matching.
	data3 := tb.Put(5, "c")
	_, ok = tb.Get(data2)
	require.False(t, ok)
	v, _ = tb.Get(data3)
	require.Equal(t, "c", v)
	require.Equal(t, 1, tb.Len())

	// Growth keeps the slots; unknown and out-of-range fds are harmless.
	data4 := tb.Put(1000, "d")
	v, _ = tb.Get(data3)
	require.Equal(t, "c", v)
	v, _ = tb.Get(data4)
	require.Equal(t, "d", v)
	_, ok = tb.Get(uint64(99999) | 1<<32)
	require.False(t, ok)
	_, ok = tb.Get(wakeData)
	require.False(t, ok)
	tb.Remove(99999)
	tb.Remove(-1)
	require.Equal(t, 2, tb.Len())

	require.Panics(t, func() { tb.Put(-1, "x") })
}

// A real reuse: an event for a connection is in the batch Wait returned,
// the reactor closes that connection while handling an earlier event, and a
// new connection gets the same fd number before the stale event is handled.
func TestTableRejectsStaleEventAfterFdReuse(t *testing.T) {
	p := newPoller(t)
	var tb Table[string]

	a, b := socketpair(t)
	dataOld := tb.Put(a, "old")
	require.NoError(t, p.Add(a, Readable, dataOld))
	write(t, b, "for the old connection")
	stale := waitOne(t, p, long)
	require.Equal(t, dataOld, stale.Data)

	// Close the old connection; open a new one.
	tb.Remove(a)
	require.NoError(t, unix.Close(a))
	c, d := socketpair(t)
	if c != a {
		// The kernel hands out the lowest free number, so c == a unless
		// something else in the process opened a file meanwhile. Force it.
		require.NoError(t, unix.Dup3(c, a, unix.O_CLOEXEC))
		require.NoError(t, unix.Close(c))
		c = a
	}
	dataNew := tb.Put(c, "new")
	require.Equal(t, Fd(dataOld), Fd(dataNew), "same fd number")
	require.NoError(t, p.Add(c, Readable, dataNew))

	// The stale event finds nothing; the new connection's own event does.
	_, ok := tb.Get(stale.Data)
	require.False(t, ok, "stale event must not reach the new connection")

	waitNone(t, p) // nothing for the new connection yet
	write(t, d, "for the new connection")
	ev := waitOne(t, p, long)
	v, ok := tb.Get(ev.Data)
	require.True(t, ok)
	require.Equal(t, "new", v)
}

func TestTableGetDoesNotAllocate(t *testing.T) {
	var tb Table[*int]
	x := 1
	data := tb.Put(3, &x)
	require.Zero(t, testing.AllocsPerRun(100, func() {
		if v, ok := tb.Get(data); !ok || v != &x {
			panic("Get")
		}
	}))
}

func TestTableEach(t *testing.T) {
	var tb Table[string]
	tb.Put(3, "c")
	tb.Put(1, "a")
	tb.Put(7, "x")
	tb.Remove(7)
	var got []string
	tb.Each(func(v string) { got = append(got, v) })
	require.Equal(t, []string{"a", "c"}, got)
}
