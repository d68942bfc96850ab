package benchcmp

import (
	"os/exec"
	"syscall"
)

// setPdeathsig has the kernel kill the child when the thread that started
// it ends: a parent killed with SIGKILL cannot end its children itself.
// (Go's threads outlive their goroutines, except a thread locked with
// runtime.LockOSThread whose goroutine exits locked; nothing here does
// that. A child's closed stdin ends it too.)
func setPdeathsig(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
