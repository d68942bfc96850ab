//go:build !unix

package connpool

import "net"

// connCheck is a no-op where a non-blocking peek is not available: a
// connection the server closed is then found on use, and the call retried
// only if its request was not written.
type connCheck struct{}

func newConnCheck(net.Conn) connCheck { return connCheck{} }

func (*connCheck) run() error { return nil }
