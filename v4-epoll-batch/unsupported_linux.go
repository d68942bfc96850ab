package epollbatch

import "errors"

// ErrUnsupported is returned by Serve and Dial on systems other than Linux;
// on Linux it is never returned.
var ErrUnsupported = errors.New("epollbatch: needs Linux (epoll)")
