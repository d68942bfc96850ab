package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rpcsteps/rpcsteps/benchcmp"
)

// Timeouts around the children.
const (
	childStartTimeout = 10 * time.Second
	childEndTimeout   = 5 * time.Second
)

// serveChild is a server child: it serves the benchcmp Echo service on v4
// on a loopback port, prints the address as the first line of out, and
// serves until SIGTERM or until in (the parent's pipe) closes.
func serveChild(in io.Reader, out io.Writer) error {
	// Ctrl-C in a terminal reaches the whole process group; the parent
	// ends its children itself, after its calls have returned.
	signal.Ignore(os.Interrupt)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)

	im, err := benchcmp.Lookup("v4")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	stop, err := im.Serve(ln)
	if err != nil {
		ln.Close()
		return err
	}
	defer stop()
	if _, err := fmt.Fprintln(out, ln.Addr()); err != nil {
		return err
	}
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, in)
		close(eof)
	}()
	select {
	case <-term:
	case <-eof:
	}
	return nil
}

// child is a server process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.Closer
	addr   string
	waited chan struct{} // closed when cmd.Wait has returned
	err    error         // cmd.Wait's error, once waited is closed
	killed bool          // by kill: its end is no error
}

// startChild re-executes self as a server child and reads the address it
// listens on. On Linux the child is killed if this process dies
// (childAttr).
func startChild(self string) (*child, error) {
	cmd := exec.Command(self, "-"+serveFlag)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = childAttr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting a server process: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, waited: make(chan struct{})}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		// Wait closes stdout: only once the address is read.
		c.err = cmd.Wait()
		close(c.waited)
	}()
	select {
	case c.addr = <-line:
	case <-time.After(childStartTimeout):
	}
	if c.addr == "" {
		c.kill()
		<-c.waited
		return nil, fmt.Errorf("the server process (pid %d) printed no address within %v", cmd.Process.Pid, childStartTimeout)
	}
	return c, nil
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

// kill sends the child SIGKILL (kill -9).
func (c *child) kill() {
	c.killed = true
	_ = c.cmd.Process.Kill()
}

// end ends the child: SIGTERM (and its stdin closed), then SIGKILL if it
// has not exited childEndTimeout later. A child that kill ended, or that
// exited on its own with status 0, ends without an error.
func (c *child) end() error {
	select {
	case <-c.waited:
	default:
		_ = c.cmd.Process.Signal(syscall.SIGTERM) // not on Windows: the closed stdin ends it there
		c.stdin.Close()
		select {
		case <-c.waited:
		case <-time.After(childEndTimeout):
			c.kill()
			<-c.waited
			return fmt.Errorf("server process (pid %d) did not exit within %v of SIGTERM: killed", c.cmd.Process.Pid, childEndTimeout)
		}
	}
	if c.err != nil && !c.killed {
		return fmt.Errorf("server process (pid %d): %w", c.cmd.Process.Pid, c.err)
	}
	return nil
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
