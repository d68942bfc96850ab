//go:build race

package epollbatch

import (
	"runtime"
	"unsafe"
)

// raceEnabled: built with -race. The race detector cannot see that bytes
// one goroutine writes to a socket are read by another; the system call
// wrappers of syscall and x/sys/unix tell it, with a release on write and
// an acquire on read of a variable standing for I/O. writev bypasses
// unix.Writev, so it tells the detector itself, with ioSync.
const raceEnabled = true

// ioSync stands for the sockets between this package's connections:
// writev releases it, a read acquires it.
var ioSync byte

func raceReleaseMerge(addr unsafe.Pointer)     { runtime.RaceReleaseMerge(addr) }
func raceAcquire(addr unsafe.Pointer)          { runtime.RaceAcquire(addr) }
func raceReadRange(addr unsafe.Pointer, n int) { runtime.RaceReadRange(addr, n) }
