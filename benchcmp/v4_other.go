//go:build !linux

package benchcmp

// v4Impls is empty where v4 does not run (it needs Linux).
func v4Impls() []Impl { return nil }
