// Command clusterbench measures the v4 cluster client
// (v4-epoll-batch/cluster) over several server processes, and counts what
// happens to calls when one of those servers is killed:
//
//	go run ./benchcmp/cmd/clusterbench
//	go run ./benchcmp/cmd/clusterbench -servers 1,2,4 -callers 64 -size 64 -duration 5s -balancer rr
//	make cluster-bench
//
// Every server is a child process of clusterbench (the benchcmp Echo
// service on v4, on a loopback port of its own). The one client process is
// clusterbench itself: one cluster.Client over a Static resolver listing
// the children, through which -callers goroutines call Echo.Echo with
// -size byte payloads, for -warmup and then -duration. Every reply is
// checked against its request.
//
// Steady runs, one per -servers count, report calls/s, the p50 and p99 of
// the calls' measured latencies, the failed calls and the calls each
// server took (from Client.Stats).
//
// The failover runs start -failover servers and kill one with SIGKILL at
// -kill-at of the measured period; once with plain calls, once with every
// call marked cluster.Idempotent. They report:
//
//   - lost: calls that returned nil with a reply that is not their
//     request, or that had not returned -deadline after the run ended.
//     This must be 0.
//   - failed: calls that returned an error, by class: ErrConnLost (sent
//     to the killed server, may have run there), ErrNotSent (never left:
//     the cluster client should have sent it elsewhere, so none should
//     reach a caller), ErrNoEndpoints, and other. Marked idempotent, none
//     should fail.
//   - out: the time from the kill to the first Stats poll (every millisecond)
//     in which the killed server's endpoint is out of the balancer.
//   - moved: the time from the kill to the start of the first 100 ms
//     window (windows start every 10 ms), at or after out, in which the
//     calls that succeeded reach 90% of the calls/s before the kill.
//
// It prints a table and, for scripts and benchstat, one line per run in
// the Go benchmark format. On a machine with few cores every server shares
// the same cores with the others and with the client: more servers add
// processes, not capacity, so the steady runs show correctness and the
// cluster client's overhead, not scaling.
//
// It exits with status 1 if a call was lost, or if a call failed where
// none should have (a steady run, ErrNotSent at a caller, an idempotent
// call, an error of no known class), or if traffic never moved off the
// killed server; with status 2 if the flags are wrong. The server
// children end with it on every path: SIGTERM at the end of each run,
// SIGKILL if that does not end them, and on Linux the parent-death signal
// (SIGKILL) if clusterbench itself dies.
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
)

// serveFlag is the hidden flag that makes clusterbench a server child.
const serveFlag = "serve"

// config is what the flags ask for.
type config struct {
	servers  []int // server counts of the steady runs
	failover int   // servers in the failover runs; 0: none
	callers  int
	size     int
	warmup   time.Duration
	duration time.Duration
	deadline time.Duration
	killAt   float64 // fraction of duration
	balancer string  // "p2c" or "rr"
	serve    bool    // the hidden -serve flag: be a server child
}

// Bounds of the flags.
const (
	maxServers = 64
	maxCallers = 1 << 16
	maxSize    = 1 << 20
)

// parseFlags parses the command line (without the program name). Usage and
// flag errors go to out.
func parseFlags(args []string, out io.Writer) (*config, error) {
	fs := flag.NewFlagSet("clusterbench", flag.ContinueOnError)
	fs.SetOutput(out)
	servers := fs.String("servers", "1,2,4", "server processes of the steady runs, comma-separated: one run each")
	failover := fs.Int("failover", 4, "server processes of the two failover runs (one is killed); 0 skips them")
	callers := fs.Int("callers", 64, "goroutines calling at once through the one cluster client")
	size := fs.Int("size", 64, "payload size in bytes, at least 8")
	warmup := fs.Duration("warmup", time.Second, "calls before the measured period of each run")
	duration := fs.Duration("duration", 5*time.Second, "the measured period of each run")
	deadline := fs.Duration("deadline", 5*time.Second, "how long after a run a call may still take to return before it counts as lost")
	killAt := fs.Float64("kill-at", 0.4, "when the failover runs kill a server, as a fraction of -duration")
	balancer := fs.String("balancer", "p2c", "p2c (power of two choices) or rr (round robin)")
	serve := fs.Bool(serveFlag, false, "")
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: clusterbench [flags]\n\n"+
			"Runs v4 servers in child processes and measures one cluster client over\n"+
			"them from this one: calls/s and latency per server count, then what a\n"+
			"server killed mid-run costs the calls.\n\n")
		fs.VisitAll(func(f *flag.Flag) {
			if f.Name == serveFlag {
				return // internal: how clusterbench starts its children
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
	cfg := &config{
		failover: *failover, callers: *callers, size: *size, warmup: *warmup,
		duration: *duration, deadline: *deadline, killAt: *killAt, balancer: *balancer, serve: *serve,
	}
	if cfg.serve {
		return cfg, nil
	}
	if *servers != "" {
		for s := range strings.SplitSeq(*servers, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || n < 1 || n > maxServers {
				return nil, fmt.Errorf("-servers %q: want whole numbers from 1 to %d, comma-separated", *servers, maxServers)
			}
			cfg.servers = append(cfg.servers, n)
		}
	}
	switch {
	case cfg.failover != 0 && (cfg.failover < 2 || cfg.failover > maxServers):
		return nil, fmt.Errorf("-failover %d: want 0 (none) or 2 to %d servers (one is killed)", cfg.failover, maxServers)
	case len(cfg.servers) == 0 && cfg.failover == 0:
		return nil, errors.New("-servers is empty and -failover 0: nothing to run")
	case cfg.callers < 1 || cfg.callers > maxCallers:
		return nil, fmt.Errorf("-callers %d: want 1 to %d", cfg.callers, maxCallers)
	case cfg.size < 8:
		return nil, fmt.Errorf("-size %d: payloads are at least 8 bytes (they carry the caller and call number)", cfg.size)
	case cfg.size > maxSize:
		return nil, fmt.Errorf("-size %d: at most %d", cfg.size, maxSize)
	case cfg.warmup < 0:
		return nil, fmt.Errorf("-warmup %v: want 0 or more", cfg.warmup)
	case cfg.duration <= 0:
		return nil, fmt.Errorf("-duration %v: want a positive duration such as 5s", cfg.duration)
	case cfg.deadline <= 0:
		return nil, fmt.Errorf("-deadline %v: want a positive duration such as 5s", cfg.deadline)
	case !(cfg.killAt > 0 && cfg.killAt < 1):
		return nil, fmt.Errorf("-kill-at %v: want a fraction between 0 and 1", cfg.killAt)
	case cfg.balancer != "p2c" && cfg.balancer != "rr":
		return nil, fmt.Errorf("-balancer %q: want p2c or rr", cfg.balancer)
	}
	return cfg, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterbench:", err)
		os.Exit(2)
	}
	if cfg.serve {
		if err := serveChild(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "clusterbench server:", err)
			os.Exit(1)
		}
		return
	}
	// Ctrl-C ends the current run early (its numbers are still printed)
	// and skips the rest; the children end with the run.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	self, err := os.Executable()
	if err != nil {
		cancel()
		fmt.Fprintln(os.Stderr, "clusterbench:", err)
		os.Exit(1)
	}
	_, ok := bench(ctx, self, cfg, os.Stdout)
	interrupted := ctx.Err() != nil
	cancel()
	if interrupted {
		fmt.Fprintln(os.Stderr, "clusterbench: interrupted")
		ok = false
	}
	if !ok {
		os.Exit(1)
	}
}
