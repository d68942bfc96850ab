package epollbatch

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// iovecs builds the iovec array flush builds, for writev.
func iovecs(bufs ...[]byte) []unix.Iovec {
	iov := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		iov[i].Base = unsafe.SliceData(b)
		iov[i].SetLen(len(b))
	}
	return iov
}

// writev writes its buffers in order, an empty one included, and reports
// a full socket as EAGAIN, as unix.Writev does.
func TestWritev(t *testing.T) {
	fds := socketpair(t)
	defer unix.Close(fds[0])

	n, err := writev(fds[0], iovecs([]byte("ab"), nil, []byte("cde"), []byte("f")))
	require.NoError(t, err)
	require.Equal(t, 6, n)
	got := make([]byte, 16)
	n, err = unix.Read(fds[1], got)
	require.NoError(t, err)
	require.Equal(t, "abcdef", string(got[:n]))

	big := make([]byte, 1<<20)
	total := 0
	for {
		n, err = writev(fds[0], iovecs(big))
		if err != nil {
			break
		}
		total += n
		require.Less(t, total, 64<<20, "a socket buffer that never fills")
	}
	require.ErrorIs(t, err, unix.EAGAIN)
	require.Positive(t, total)

	require.NoError(t, unix.Close(fds[1]))
	_, err = writev(fds[0], iovecs([]byte("x")))
	require.ErrorIs(t, err, unix.EPIPE, "the peer closed")
}
