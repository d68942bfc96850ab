package workers

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBoundedAndOverload(t *testing.T) {
	p := New(4, time.Minute)
	defer p.Close()
	release := make(chan struct{})
	var started sync.WaitGroup
	for range 4 {
		started.Add(1)
		require.True(t, p.TrySubmit(func() { started.Done(); <-release }))
	}
	started.Wait()
	require.Equal(t, 4, p.Running())
	require.Equal(t, 4, p.Busy())
	require.False(t, p.TrySubmit(func() {}), "all busy, at size: overloaded")
	close(release)
	require.Eventually(t, func() bool { return p.Busy() == 0 }, 5*time.Second, time.Millisecond)

	// idle workers take new tasks without new goroutines
	var n atomic.Int32
	for range 100 {
		for !p.TrySubmit(func() { n.Add(1) }) {
			time.Sleep(time.Microsecond)
		}
	}
	require.Eventually(t, func() bool { return n.Load() == 100 }, 5*time.Second, time.Millisecond)
	require.LessOrEqual(t, p.Running(), 4)
}

func TestIdleWorkersLeave(t *testing.T) {
	p := New(8, 20*time.Millisecond)
	defer p.Close()
	for range 8 {
		require.True(t, p.TrySubmit(func() {}))
	}
	require.Eventually(t, func() bool { return p.Running() == 0 }, 5*time.Second, time.Millisecond)
}

func TestCloseWaitsAndRefuses(t *testing.T) {
	p := New(2, time.Minute)
	var done atomic.Bool
	require.True(t, p.TrySubmit(func() { time.Sleep(20 * time.Millisecond); done.Store(true) }))
	p.Close()
	require.True(t, done.Load(), "Close waited for the busy worker")
	require.False(t, p.TrySubmit(func() {}))
	p.Close() // twice is fine
	require.Zero(t, p.Running())
}
