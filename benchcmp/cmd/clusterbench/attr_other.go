//go:build !linux

package main

import "syscall"

// childAttr: without Linux's parent-death signal, a server child ends
// when its stdin, the parent's pipe, closes, which it does when the
// parent dies.
func childAttr() *syscall.SysProcAttr { return nil }
