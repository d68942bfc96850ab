package main

import (
	"errors"
	"io"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/rpcsteps/rpcsteps/benchcmp"
)

// The server children are benchcmp's (benchcmp.ServeChild and
// StartServer, as for loadgen and the cross-process benchmarks: the
// address on the first line, SIGTERM or a closed stdin to end, Pdeathsig
// on Linux), serving v4. What clusterbench adds: starting several at
// once, and kill -9 as an expected end.

// serveChild is a server child: benchcmp's, serving v4.
func serveChild(in io.Reader, out io.Writer) error {
	im, err := benchcmp.Lookup("v4")
	if err != nil {
		return err
	}
	return benchcmp.ServeChild(im, in, out)
}

// child is a server process.
type child struct {
	*benchcmp.ServerProcess
	killed atomic.Bool // by kill: its end is no error
}

// startChild re-executes self as a server child and reads the address it
// listens on.
func startChild(self string) (*child, error) {
	p, err := benchcmp.StartServer(exec.Command(self, "-"+serveFlag))
	if err != nil {
		return nil, err
	}
	return &child{ServerProcess: p}, nil
}

// startChildren starts n server children, at once. On an error it ends
// those it started.
func startChildren(self string, n int) ([]*child, error) {
	cs := make([]*child, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cs {
		wg.Go(func() { cs[i], errs[i] = startChild(self) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, errors.Join(err, endChildren(slices.DeleteFunc(cs, func(c *child) bool { return c == nil })))
	}
	return cs, nil
}

// kill sends the child SIGKILL (kill -9) and waits for it.
func (c *child) kill() {
	c.killed.Store(true)
	c.Kill()
}

// end ends the child (benchcmp's End: SIGTERM, then SIGKILL if it
// lingers). A child that kill ended ends without an error.
func (c *child) end() error {
	if c.killed.Load() {
		return nil
	}
	return c.End()
}

// endChildren ends every child, at once, and waits for them all.
func endChildren(cs []*child) error {
	errs := make(chan error, len(cs))
	for _, c := range cs {
		go func() { errs <- c.end() }()
	}
	var all []error
	for range cs {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}
