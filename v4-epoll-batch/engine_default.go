//go:build !rpcsteps_portable

package epollbatch

// portableDefault: the epoll reactors serve plain sockets on Linux unless
// WithPortableEngine says otherwise.
const portableDefault = false
