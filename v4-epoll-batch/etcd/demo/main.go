// Command demo shows rpcsteps v4 servers found through etcd: it starts an
// embedded etcd, three v4 servers, each a child process (this program
// again) that registers itself with a 2 s lease, and a cluster client that
// resolves them through etcd and calls them from 16 goroutines, 8 with
// plain calls and 8 with idempotent ones. It prints each second who
// answered, then kills one server with SIGKILL (no deregistration: its
// lease has to expire), then stops another with SIGTERM (a graceful
// Shutdown, which withdraws it from etcd first), and checks that every
// call either got its reply or returned an error, that the calls moved to
// the servers left, and that neither idempotent calls nor calls during the
// graceful shutdown failed. It exits 0 if so, 1 if not.
//
// Run it from the repository root with `make cluster-demo`, or here with
// `go run ./demo`.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/etcd"
)

const (
	prefix = "/rpcsteps/demo"
	ttl    = 2 * time.Second
	// shutdownDelay: how long a server shutting down keeps reading
	// requests after it withdrew its key, for the client to stop picking
	// it.
	shutdownDelay = 300 * time.Millisecond
	callTimeout   = 2 * time.Second
)

func main() {
	server := flag.String("server", "", "run as the server of this name (the demo starts itself so)")
	etcdAddr := flag.String("etcd", "", "with -server: the etcd to register in")
	flag.Parse()
	var err error
	if *server != "" {
		err = serve(*server, *etcdAddr)
	} else {
		err = demo()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// Who is the servers' service.
type Who struct{ name string }

// Name answers the server's name.
func (w Who) Name(_ struct{}, name *string) error {
	*name = w.name
	return nil
}

// serve is a child: a v4 server registered in etcd, serving until SIGTERM
// (a graceful Shutdown) or until its parent goes (its stdin closes).
func serve(name, etcdAddr string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdAddr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	srv := epollbatch.NewServer()
	if err := srv.Register(Who{name}); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	self := cluster.Endpoint{Network: "tcp", Addr: ln.Addr().String()}
	reg, err := etcd.RegisterServer(ctx, cli, prefix, srv, self, etcd.WithTTL(ttl), etcd.WithShutdownDelay(shutdownDelay))
	if err != nil {
		srv.Close()
		return err
	}
	fmt.Printf("ready %s %s\n", self.Addr, reg.TTL())

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	orphaned := make(chan struct{})
	go func() {
		bufio.NewReader(os.Stdin).ReadString('\n') // returns when the parent goes
		close(orphaned)
	}()
	select {
	case <-term:
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		err = srv.Shutdown(sctx) // withdraws the key first
	case <-orphaned:
		err = srv.Close()
	case err = <-served:
	}
	return err
}

// child is a server process the demo started.
type child struct {
	name  string
	addr  string
	cmd   *exec.Cmd
	stdin io.WriteCloser // held open while the child should live
	done  chan error     // cmd.Wait's result
}

// demo is the parent.
func demo() error {
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Printf("%5.1fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	e, dir, err := startEtcd()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	defer e.Close()
	etcdAddr := e.Clients[0].Addr().String()
	logf("etcd serving on %s (embedded; data in %s)", etcdAddr, dir)

	children := make(map[string]*child)
	names := make(map[string]string) // address → name, for the log
	defer func() {
		for _, c := range children {
			c.cmd.Process.Kill()
			<-c.done
		}
	}()
	for _, name := range []string{"s1", "s2", "s3"} {
		c, err := startChild(name, etcdAddr)
		if err != nil {
			return err
		}
		children[name] = c
		names[c.addr] = name
		logf("%s: pid %d serving on %s, registered in etcd under %s with a %v lease", name, c.cmd.Process.Pid, c.addr, prefix, ttl)
	}

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcdAddr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	var resolved atomic.Int32
	res := logged{etcd.NewResolver(cli, prefix), func(eps []cluster.Endpoint) {
		var ns []string
		for _, ep := range eps {
			ns = append(ns, names[ep.Addr])
		}
		resolved.Store(int32(len(eps)))
		logf("resolver: %d server(s) in etcd: %s", len(eps), strings.Join(ns, " "))
	}}
	cc, err := cluster.Dial(res, cluster.WithBalancer(cluster.P2C()))
	if err != nil {
		return err
	}
	defer cc.Close()

	// The callers.
	var (
		mu       sync.Mutex
		answered = make(map[string]int) // server → calls it answered, this second
		st       stats
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 16 {
		idempotent := i%2 == 1
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				if idempotent {
					ctx = cluster.Idempotent(ctx)
				}
				var name string
				err := cc.Call(ctx, "Who.Name", struct{}{}, &name)
				cancel()
				mu.Lock()
				st.count(idempotent, name, err)
				if err == nil && name != "" {
					answered[name]++
				}
				mu.Unlock()
			}
		})
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}()

	// tick prints the second's calls and who answered them, and returns
	// who did.
	tick := func() map[string]int {
		time.Sleep(time.Second)
		mu.Lock()
		got := answered
		answered = make(map[string]int)
		errs := st.plainErrs + st.idemErrs
		mu.Unlock()
		total := 0
		for _, n := range got {
			total += n
		}
		var parts []string
		for _, name := range slices.Sorted(maps.Keys(got)) {
			parts = append(parts, fmt.Sprintf("%s %3.0f%%", name, 100*float64(got[name])/float64(max(total, 1))))
		}
		logf("%6d calls/s  %-28s errors so far: %d", total, strings.Join(parts, "  "), errs)
		return got
	}

	logf("calling Who.Name from 16 goroutines (8 plain calls, 8 idempotent) through cluster.Dial(etcd resolver, P2C)")
	for range 3 {
		tick()
	}

	// A crash: no Shutdown, no deregistration.
	victim := children["s1"]
	logf("kill -9 s1 (pid %d): it cannot deregister; its lease expires within %v", victim.cmd.Process.Pid, ttl)
	victim.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.done
	delete(children, "s1")
	var afterKill map[string]int
	for range 3 {
		afterKill = tick()
	}
	mu.Lock()
	killErrs := st
	mu.Unlock()

	// A graceful stop: Shutdown withdraws the key, waits shutdownDelay,
	// then drains.
	logf("SIGTERM s2: its Shutdown withdraws it from etcd, then drains")
	children["s2"].cmd.Process.Signal(syscall.SIGTERM)
	if err := <-children["s2"].done; err != nil {
		return fmt.Errorf("s2's shutdown: %w", err)
	}
	delete(children, "s2")
	var afterTerm map[string]int
	for range 2 {
		afterTerm = tick()
	}
	close(stop)
	wg.Wait()

	logf("%d calls: %d answered; failed with an error: %d plain, %d idempotent; lost (no reply, no error): %d",
		st.calls, st.ok, st.plainErrs, st.idemErrs, st.lost)
	if st.firstErr != nil {
		logf("first error: %v", st.firstErr)
		logf("(a plain call in flight on a server that dies may have run: it fails, with ErrConnLost, rather than run twice; an idempotent one is sent to another server)")
	}
	var failures []string
	if st.lost > 0 {
		failures = append(failures, "calls were lost without an error")
	}
	if st.idemErrs > 0 {
		failures = append(failures, "idempotent calls failed, with s2 and s3 up")
	}
	if st.plainErrs != killErrs.plainErrs {
		failures = append(failures, "plain calls failed during s2's graceful shutdown")
	}
	if afterKill["s1"] > 0 || afterKill["s2"] == 0 || afterKill["s3"] == 0 {
		failures = append(failures, fmt.Sprintf("the calls did not move to s2 and s3 after s1 died: %v", afterKill))
	}
	if len(afterTerm) != 1 || afterTerm["s3"] == 0 {
		failures = append(failures, fmt.Sprintf("the calls did not move to s3 after s2 stopped: %v", afterTerm))
	}
	if resolved.Load() != 1 {
		failures = append(failures, fmt.Sprintf("the resolver reports %d servers, not 1", resolved.Load()))
	}
	if len(failures) > 0 {
		return errors.New(strings.Join(failures, "; "))
	}
	logf("ok: every call answered or failed with an error; the calls moved to the servers left")
	return nil
}

// stats counts the calls' outcomes.
type stats struct {
	calls, ok, lost     int
	plainErrs, idemErrs int
	firstErr            error
}

func (s *stats) count(idempotent bool, name string, err error) {
	s.calls++
	switch {
	case err == nil && name != "":
		s.ok++
	case err == nil:
		s.lost++
	case idempotent:
		s.idemErrs++
	default:
		s.plainErrs++
	}
	if err != nil && s.firstErr == nil {
		s.firstErr = err
	}
}

// logged is a cluster.Resolver that shows each set its resolver reports.
type logged struct {
	r    cluster.Resolver
	show func([]cluster.Endpoint)
}

// Watch watches through l.r, showing each set before handing it on.
func (l logged) Watch(ctx context.Context, update func([]cluster.Endpoint)) error {
	return l.r.Watch(ctx, func(eps []cluster.Endpoint) {
		l.show(eps)
		update(eps)
	})
}

// startChild starts this program as the server name and waits until it
// has registered.
func startChild(name, etcdAddr string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-server", name, "-etcd", etcdAddr)
	cmd.Stderr = os.Stderr
	// The child's stdin closes when the demo exits, however it exits: the
	// child then exits too.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{name: name, cmd: cmd, stdin: stdin, done: make(chan error, 1)}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "ready" {
				ready <- f[1]
			}
		}
		c.done <- cmd.Wait()
	}()
	select {
	case c.addr = <-ready:
		return c, nil
	case err := <-c.done:
		return nil, fmt.Errorf("%s exited before it was ready: %v", name, err)
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		return nil, fmt.Errorf("%s was not ready within 10 s", name)
	}
}

// startEtcd starts a single-member etcd on a free loopback port, its data
// in a new temporary directory.
func startEtcd() (*embed.Etcd, string, error) {
	dir, err := os.MkdirTemp("", "rpcsteps-demo-etcd")
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	client, peer, err := freeAddrs()
	if err != nil {
		return nil, "", err
	}
	cfg.ListenClientUrls = []url.URL{{Scheme: "http", Host: client}}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: peer}}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.EnableGRPCGateway = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, dir, nil
	case <-time.After(20 * time.Second):
		e.Close()
		os.RemoveAll(dir)
		return nil, "", errors.New("etcd did not start within 20 s")
	}
}

// freeAddrs returns two loopback addresses whose ports were free a moment
// ago.
func freeAddrs() (string, string, error) {
	a, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", err
	}
	defer a.Close()
	b, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", err
	}
	defer b.Close()
	return a.Addr().String(), b.Addr().String(), nil
}
