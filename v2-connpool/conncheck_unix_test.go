//go:build unix

package connpool

import (
	"errors"
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// The dead-connection check: quiet is alive; closed by the peer, or with
// unexpected bytes waiting, is dead. It never blocks.
func TestConnCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	pair := func() (net.Conn, net.Conn) {
		a, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		b, err := ln.Accept()
		require.NoError(t, err)
		return a, b
	}

	a, b := pair()
	check := newConnCheck(a)
	require.NoError(t, check.run(), "open and quiet")
	// The check of a healthy connection, the one every reuse makes, is free.
	require.Zero(t, testing.AllocsPerRun(100, func() { _ = check.run() }))
	b.Write([]byte("x"))
	waitFor(t, "the byte arrives", func() bool { return errors.Is(check.run(), errUnexpectedData) })
	a.Close()
	b.Close()

	a, b = pair()
	check = newConnCheck(a)
	b.Close()
	waitFor(t, "the close arrives", func() bool { return errors.Is(check.run(), io.EOF) })
	a.Close()
}
