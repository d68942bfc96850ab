//go:build !linux

package epollbatch

// loopsReady: there are no reactors on this system.
func loopsReady(*Server) bool { return true }
