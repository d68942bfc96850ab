//go:build !linux

package benchcmp

import "os/exec"

// setPdeathsig does nothing here: only Linux has Pdeathsig. A child whose
// parent dies still sees its stdin close and exits.
func setPdeathsig(*exec.Cmd) {}
