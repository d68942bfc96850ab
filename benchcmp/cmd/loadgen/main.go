// Command loadgen measures one implementation with its server in another
// process, so that client and server do not share a Go scheduler, a heap
// and a garbage collector, as they do in `go test -bench ./benchcmp`:
//
//	go run ./benchcmp/cmd/loadgen -impl v3 -callers 1024 -size 64 -duration 10s
//	go run ./benchcmp/cmd/loadgen -impl all -callers 1,64,1024 -duration 5s
//
// For each implementation and caller count it starts the server (the
// benchcmp Echo service) in a child process, dials it with one client, and
// lets -callers goroutines call Echo.Echo (or Echo.Sleep, a 1 ms method) for
// -duration. Every reply is checked against its request. It prints the
// calls so far once a second, then calls/s, the measured p50, p99 and
// p99.9 latency of single calls, the number of failed calls, and the CPU
// time per call of the server process and of loadgen's; with more than
// one run, a table of them all at the end. -impl raw is no RPC at all, a
// length-prefixed echo: the transport's limit (benchcmp.Raw). The child
// and the run are benchcmp's (ServeChild, StartServer, Load), which the
// cross-process benchmarks of make bench-all (benchcmp/cross) share.
//
// It exits with status 1 if a call failed and 2 if the flags are wrong.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rpcsteps/rpcsteps/benchcmp"
)

// serveFlag is the hidden flag that makes loadgen the server child
// (benchcmp.ServeChild): it serves the named implementation on a loopback
// port, prints the address on stdout and serves until SIGTERM or until its
// stdin closes. LOADGEN_SERVER_CPUPROFILE names a file for the server's
// CPU profile, LOADGEN_CLIENT_CPUPROFILE one for the client's, over the
// measured window (use them with one -impl and one -callers).
const serveFlag = "serve"

// config is what the flags ask for.
type config struct {
	impls    []benchcmp.Impl
	callers  []int
	size     int
	duration time.Duration
	method   string // "Echo.Echo" or "Echo.Sleep"
	serve    string // the hidden -serve flag: be the server child
}

// methods maps the -method flag to the service method.
var methods = map[string]string{"echo": "Echo.Echo", "sleep": "Echo.Sleep"}

// maxCallers bounds -callers: each caller is a goroutine with a payload.
const maxCallers = 1 << 20

// parseFlags parses the command line (without the program name). Usage and
// flag errors go to out.
func parseFlags(args []string, out io.Writer) (*config, error) {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(out)
	impl := fs.String("impl", "v3", "implementation, or a comma-separated list of them: "+strings.Join(implNames(), ", ")+", or all")
	callers := fs.String("callers", "64", "goroutines calling at once through the one client; a comma-separated list runs each")
	size := fs.Int("size", 64, "payload size in bytes, at least 8")
	duration := fs.Duration("duration", 5*time.Second, "how long each run makes calls")
	method := fs.String("method", "echo", "echo (Echo.Echo) or sleep (Echo.Sleep: 1 ms in the method)")
	serve := fs.String(serveFlag, "", "")
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: loadgen [flags]\n\n"+
			"Runs the chosen implementation's server in a child process and measures\n"+
			"calls/s and latency from this one.\n\n")
		fs.VisitAll(func(f *flag.Flag) {
			if f.Name == serveFlag {
				return // internal: how loadgen starts its child
			}
			fmt.Fprintf(out, "  -%s\n    \t%s (default %q)\n", f.Name, f.Usage, f.DefValue)
		})
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q (flags only)", fs.Args())
	}
	cfg := &config{size: *size, duration: *duration, serve: *serve}
	if cfg.serve != "" {
		im, err := lookup(cfg.serve)
		if err != nil {
			return nil, err
		}
		cfg.impls = []benchcmp.Impl{im}
		return cfg, nil
	}

	if *impl == "all" {
		cfg.impls = benchcmp.Impls()
	} else {
		for name := range strings.SplitSeq(*impl, ",") {
			im, err := lookup(strings.TrimSpace(name))
			if err != nil {
				return nil, err
			}
			cfg.impls = append(cfg.impls, im)
		}
	}
	for s := range strings.SplitSeq(*callers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > maxCallers {
			return nil, fmt.Errorf("-callers %q: want whole numbers from 1 to %d, comma-separated", *callers, maxCallers)
		}
		cfg.callers = append(cfg.callers, n)
	}
	if cfg.size < 8 {
		return nil, fmt.Errorf("-size %d: payloads are at least 8 bytes (they carry the caller and call number)", cfg.size)
	}
	if cfg.size > 64<<20 {
		return nil, fmt.Errorf("-size %d: at most 64 MiB", cfg.size)
	}
	if cfg.duration <= 0 {
		return nil, fmt.Errorf("-duration %v: want a positive duration such as 5s", cfg.duration)
	}
	m, ok := methods[*method]
	if !ok {
		return nil, fmt.Errorf("-method %q: want echo or sleep", *method)
	}
	cfg.method = m
	for _, im := range cfg.impls {
		if im.EchoOnly && m != "Echo.Echo" {
			return nil, fmt.Errorf("-impl %s serves echo only, not -method %s", im.Name, *method)
		}
	}
	return cfg, nil
}

func implNames() []string {
	var names []string
	for _, im := range append(append(benchcmp.Impls(), benchcmp.Extras()...), benchcmp.Raw()) {
		names = append(names, im.Name)
	}
	return names
}

func lookup(name string) (benchcmp.Impl, error) {
	im, err := benchcmp.Lookup(name)
	if err != nil {
		return im, fmt.Errorf("-impl %q: want one of %s, or all", name, strings.Join(implNames(), ", "))
	}
	return im, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if cfg.serve != "" {
		if err := benchcmp.ServeChild(cfg.impls[0], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "loadgen server (%s): %v\n", cfg.serve, err)
			os.Exit(1)
		}
		return
	}

	// Ctrl-C ends the current run early (its numbers are still printed)
	// and skips the rest.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	progress := newProgress(os.Stdout)
	var sums []*summary
	failed := false
	for _, callers := range cfg.callers {
		for _, im := range cfg.impls {
			if ctx.Err() != nil {
				break
			}
			spec := runSpec{impl: im, method: cfg.method, callers: callers, size: cfg.size, duration: cfg.duration}
			fmt.Printf("== %s\n", spec)
			s, err := runAgainstChild(ctx, self, spec, progress)
			if s != nil {
				fmt.Println(s)
				sums = append(sums, s)
				failed = failed || s.errors > 0
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "loadgen: %s: %v\n", spec, err)
				failed = true
			}
		}
	}
	if len(sums) > 1 {
		fmt.Println()
		printTable(os.Stdout, sums)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "loadgen: interrupted")
		failed = true
	}
	if failed {
		os.Exit(1)
	}
}
