//go:build unix

package connpool

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// errUnexpectedData: an idle connection had bytes to read. Nothing should
// arrive between calls, so the connection is out of step: discard it.
var errUnexpectedData = errors.New("connpool: data on an idle connection")

// connCheck tells whether an idle connection is still usable, without
// blocking and without taking any lock: one recv(MSG_PEEK|MSG_DONTWAIT).
// "Would block" means open and quiet; 0 bytes means the server closed it (a
// restart, or its idle timeout); an error means it was reset.
type connCheck struct {
	raw  syscall.RawConn
	buf  [1]byte
	err  error
	peek func(fd uintptr) bool // made once, so that a check allocates nothing
}

func newConnCheck(c net.Conn) connCheck {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return connCheck{}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return connCheck{}
	}
	return connCheck{raw: raw}
}

// run returns nil when the connection looks usable.
func (cc *connCheck) run() error {
	if cc.raw == nil {
		return nil
	}
	if cc.peek == nil {
		cc.peek = func(fd uintptr) bool {
			n, _, err := syscall.Recvfrom(int(fd), cc.buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
				cc.err = nil
			case err != nil:
				cc.err = err
			case n == 0:
				cc.err = io.EOF
			default:
				cc.err = errUnexpectedData
			}
			return true // done: never wait for readiness
		}
	}
	if err := cc.raw.Read(cc.peek); err != nil {
		return err
	}
	return cc.err
}
