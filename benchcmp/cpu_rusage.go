//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package benchcmp

import (
	"syscall"
	"time"
)

// ProcessCPU returns the user and system CPU time this process (all its
// threads) has used so far, from getrusage(RUSAGE_SELF); ok is false where
// the system cannot say.
func ProcessCPU() (user, sys time.Duration, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0, false
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano()), true
}
