//go:build !race

package epollbatch

import "unsafe"

// raceEnabled: built without -race; the hooks below compile to nothing.
const raceEnabled = false

var ioSync byte

func raceReleaseMerge(unsafe.Pointer)   {}
func raceAcquire(unsafe.Pointer)        {}
func raceReadRange(unsafe.Pointer, int) {}
