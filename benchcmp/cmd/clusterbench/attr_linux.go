package main

import "syscall"

// childAttr makes the kernel kill a server child (SIGKILL) when the
// thread that started it dies: if clusterbench is killed, or crashes,
// none of its servers is left behind. (The Go runtime does not end its
// threads, except one locked by a goroutine that exits without unlocking
// it; nothing in clusterbench locks one.)
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
