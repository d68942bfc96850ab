//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package benchcmp

import "time"

// ProcessCPU returns the user and system CPU time this process has used so
// far; ok is false here: this system's is not read.
func ProcessCPU() (user, sys time.Duration, ok bool) { return 0, 0, false }
