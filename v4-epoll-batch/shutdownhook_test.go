package epollbatch

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// RegisterOnShutdown's functions run once, in order, when the first
// Shutdown begins and before the listener closes; a later Close or
// Shutdown does not run them again, and one registered after shutdown
// began never runs.
func TestRegisterOnShutdown(t *testing.T) {
	s := NewServer()
	require.NoError(t, s.RegisterName("Echo", echo{}))
	addr := serveForTest(t, s)

	var order []string
	s.RegisterOnShutdown(func() {
		// The listener is still open while the hooks run.
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		order = append(order, "first", errString(err))
	})
	s.RegisterOnShutdown(func() { order = append(order, "second") })

	require.NoError(t, s.Shutdown(context.Background()))
	s.RegisterOnShutdown(func() { order = append(order, "late") })
	require.NoError(t, s.Close())
	require.NoError(t, s.Shutdown(context.Background()))
	require.Equal(t, []string{"first", "<nil>", "second"}, order)
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
