//go:build race

package epollbatch

import (
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// What a goroutine did before its writev is ordered, for the race
// detector, before what the goroutine that reads those bytes does after
// its read, as with unix.Writev and unix.Read. Without writev's release
// the detector reports the plain variable below (TestInterceptorChainOrder
// failed that way in CI, now and then: its handler's trace and the test's
// read of it had only the socket between them).
func TestWritevOrdersForTheRaceDetector(t *testing.T) {
	fds := socketpair(t)
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])

	var x int // no lock: the socket orders it
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		x = 1
		_, err := writev(fds[0], iovecs([]byte("x")))
		assert.NoError(t, err)
	}()
	buf := make([]byte, 1)
	for {
		n, err := read(fds[1], buf)
		if n == 1 {
			break
		}
		require.ErrorIs(t, err, unix.EAGAIN)
		runtime.Gosched()
	}
	require.Equal(t, 1, x)
	wg.Wait()
}
