package benchcmp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A server child is a process that serves one implementation on a
// loopback port for a parent that measures it: the cross-process
// benchmarks of benchcmp/cross (the test binary re-executed) and
// cmd/loadgen (loadgen re-executed with -serve). The two sides speak
// through the child's standard input and output:
//
//   - the child prints the address it listens on as its first line;
//   - for each line "cpu" on its input it prints "cpu USER SYS", the
//     nanoseconds of CPU its process has used so far (getrusage);
//   - it exits on SIGTERM, or when its input closes, which is what happens
//     when the parent dies however it dies (and on Linux the kernel also
//     kills it then: Pdeathsig).

// Timeouts around a server child.
const (
	childStartTimeout = 10 * time.Second
	childEndTimeout   = 10 * time.Second
	childCPUTimeout   = 5 * time.Second
)

// ServeChild is the child's side: it serves im on a loopback port, prints
// the address as the first line of out, answers "cpu" lines read from in,
// and returns on SIGTERM or once in is closed.
//
// LOADGEN_SERVER_CPUPROFILE, if set, names a file for the server's CPU
// profile (the last server started writes it).
func ServeChild(im Impl, in io.Reader, out io.Writer) error {
	// Ctrl-C in a terminal reaches the whole process group; the parent
	// decides when the server ends, after its calls have returned.
	signal.Ignore(os.Interrupt)
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	defer signal.Stop(term)

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
	if path := os.Getenv("LOADGEN_SERVER_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if _, err := fmt.Fprintln(out, ln.Addr()); err != nil {
		return err
	}
	eof := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) != "cpu" {
				continue
			}
			var err error
			if user, sys, ok := ProcessCPU(); ok {
				_, err = fmt.Fprintf(out, "cpu %d %d\n", user.Nanoseconds(), sys.Nanoseconds())
			} else {
				_, err = fmt.Fprintln(out, "cpu unknown")
			}
			if err != nil {
				eof <- err
				return
			}
		}
		eof <- nil
	}()
	select {
	case <-term:
		return nil
	case err := <-eof:
		return err
	}
}

// ServerProcess is a server child started by StartServer.
type ServerProcess struct {
	// Addr is the address the child serves on.
	Addr string

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // the child's output lines after the address
	mu     sync.Mutex  // one CPU question at a time
	once   sync.Once
	endErr error
}

// StartServer starts cmd, which must run ServeChild (its Stdin and Stdout
// are set here), and reads the address the child listens on. The caller
// must End or Kill it; on Linux the child is also killed if the thread
// that started it dies.
func StartServer(cmd *exec.Cmd) (*ServerProcess, error) {
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	setPdeathsig(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the server process: %w", err)
	}
	p := &ServerProcess{cmd: cmd, stdin: stdin, lines: make(chan string, 1)}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- strings.TrimSpace(sc.Text())
		}
	}()
	select {
	case p.Addr = <-p.lines:
	case <-time.After(childStartTimeout):
	}
	if p.Addr == "" {
		p.Kill()
		return nil, fmt.Errorf("the server process printed no address within %v", childStartTimeout)
	}
	return p, nil
}

// Pid is the child's process id.
func (p *ServerProcess) Pid() int { return p.cmd.Process.Pid }

// CPU asks the child how much CPU time (user plus system) its process has
// used so far.
func (p *ServerProcess) CPU() (time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := io.WriteString(p.stdin, "cpu\n"); err != nil {
		return 0, fmt.Errorf("asking the server process for its CPU time: %w", err)
	}
	select {
	case line, ok := <-p.lines:
		if !ok {
			return 0, errors.New("the server process closed its output")
		}
		return parseCPULine(line)
	case <-time.After(childCPUTimeout):
		return 0, fmt.Errorf("the server process did not report its CPU time within %v", childCPUTimeout)
	}
}

// parseCPULine reads the child's answer "cpu USER SYS" (nanoseconds).
func parseCPULine(line string) (time.Duration, error) {
	f := strings.Fields(line)
	if len(f) == 2 && f[0] == "cpu" && f[1] == "unknown" {
		return 0, errors.New("the server process cannot measure its CPU time on this system")
	}
	if len(f) != 3 || f[0] != "cpu" {
		return 0, fmt.Errorf("the server process answered %q, want \"cpu USER SYS\"", line)
	}
	user, err1 := strconv.ParseInt(f[1], 10, 64)
	sys, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || user < 0 || sys < 0 {
		return 0, fmt.Errorf("the server process answered %q, want \"cpu USER SYS\" in nanoseconds", line)
	}
	return time.Duration(user + sys), nil
}

// End signals the child with SIGTERM and waits for it to exit; if it has
// not exited after childEndTimeout, it is killed. End and Kill may be
// called more than once, and after each other: only the first acts.
func (p *ServerProcess) End() error {
	p.once.Do(func() {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			p.stdin.Close() // no SIGTERM here (Windows): a closed stdin ends it too
		}
		done := make(chan error, 1)
		go func() { done <- p.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				p.endErr = fmt.Errorf("server process (pid %d): %w", p.Pid(), err)
			}
		case <-time.After(childEndTimeout):
			_ = p.cmd.Process.Kill()
			<-done
			p.endErr = fmt.Errorf("server process (pid %d) did not exit within %v of SIGTERM: killed", p.Pid(), childEndTimeout)
		}
		p.stdin.Close()
	})
	return p.endErr
}

// Kill kills the child at once and waits for it: for the paths where the
// measurement already failed.
func (p *ServerProcess) Kill() {
	p.once.Do(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		p.stdin.Close()
		p.endErr = fmt.Errorf("server process (pid %d): killed", p.Pid())
	})
}

// CPUMeter measures the CPU time a window of calls costs the server child
// and this process (the client, and whatever else it runs). Give its Edge
// to Load.OnWindow, or call it around a window yourself.
type CPUMeter struct {
	// Server is the server child to ask.
	Server *ServerProcess
	// ServerCPU and ClientCPU are the CPU times of the last window, valid once
	// Edge(false) has been called and Err is nil.
	ServerCPU, ClientCPU time.Duration
	// Err is the first failure to read a CPU time.
	Err error

	srv0, cli0 time.Duration
}

// Edge reads both CPU times: at the window's opening (open) and at its
// close, when it sets ServerCPU and ClientCPU.
func (m *CPUMeter) Edge(open bool) {
	s, err := m.Server.CPU()
	if err != nil && m.Err == nil {
		m.Err = err
	}
	cu, cs, ok := ProcessCPU()
	if !ok && m.Err == nil {
		m.Err = errors.New("this process's CPU time cannot be read on this system")
	}
	if open {
		m.srv0, m.cli0 = s, cu+cs
		return
	}
	m.ServerCPU, m.ClientCPU = s-m.srv0, cu+cs-m.cli0
}
