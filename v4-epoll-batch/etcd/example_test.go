package etcd_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/cluster"
	"github.com/rpcsteps/rpcsteps/v4-epoll-batch/etcd"
)

// Echo is the examples' service.
type Echo struct{}

// Hello answers "hello, " + name.
func (Echo) Hello(name string, reply *string) error {
	*reply = "hello, " + name
	return nil
}

// A server registers itself in etcd when it starts serving and withdraws
// itself when its Shutdown begins; a resolver watching the prefix sees it
// come and go.
func Example() {
	cli, stop := exampleEtcd()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The server.
	srv := epollbatch.NewServer()
	srv.Register(Echo{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	self := cluster.Endpoint{Network: "tcp", Addr: ln.Addr().String()}
	if _, err := etcd.RegisterServer(ctx, cli, "/rpcsteps/echo", srv, self); err != nil {
		panic(err)
	}

	// A client's side: the resolver's first report, and a call to it.
	sets := make(chan []cluster.Endpoint, 8)
	watchCtx, endWatch := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() {
		watched <- etcd.NewResolver(cli, "/rpcsteps/echo").Watch(watchCtx, func(eps []cluster.Endpoint) { sets <- eps })
	}()
	next := func() []cluster.Endpoint {
		select {
		case eps := <-sets:
			return eps
		case <-time.After(5 * time.Second):
			panic("the resolver reported nothing within 5 s")
		}
	}
	eps := next()
	fmt.Println("resolved:", len(eps), "server, the one registered:", eps[0] == self)
	c, _ := epollbatch.Dial(eps[0].Network, eps[0].Addr)
	var reply string
	c.Call(ctx, "Echo.Hello", "etcd", &reply)
	fmt.Println(reply)
	c.Close()

	srv.Shutdown(ctx)
	fmt.Println("after Shutdown:", next())
	endWatch()
	fmt.Println(<-watched)
	// Output:
	// resolved: 1 server, the one registered: true
	// hello, etcd
	// after Shutdown: []
	// context canceled
}

// Registering endpoints by hand: each is a key held by a lease; Close
// revokes the lease, which takes the key.
func ExampleRegister() {
	cli, stop := exampleEtcd()
	defer stop()
	ctx := context.Background()

	a, err := etcd.Register(ctx, cli, "/svc", cluster.Endpoint{Network: "tcp", Addr: "10.0.0.1:9000"}, etcd.WithTTL(5*time.Second))
	if err != nil {
		panic(err)
	}
	b, err := etcd.Register(ctx, cli, "/svc", cluster.Endpoint{Network: "unix", Addr: "/run/svc.sock"})
	if err != nil {
		panic(err)
	}
	fmt.Println(a.Key(), a.TTL())
	fmt.Println(b.Key(), b.TTL())
	resp, _ := cli.Get(ctx, a.Key())
	fmt.Println(string(resp.Kvs[0].Value))

	a.Close()
	b.Close()
	resp, _ = cli.Get(ctx, "/svc/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	fmt.Println("keys left:", resp.Count)
	// Output:
	// /svc/tcp/10.0.0.1:9000 5s
	// /svc/unix//run/svc.sock 10s
	// {"network":"tcp","addr":"10.0.0.1:9000"}
	// keys left: 0
}

// exampleEtcd starts a single-member etcd on a free loopback port, with
// its data in a temporary directory, and returns a client of it and a
// function that closes both.
func exampleEtcd() (*clientv3.Client, func()) {
	dir, err := os.MkdirTemp("", "etcd-example")
	if err != nil {
		panic(err)
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{{Scheme: "http", Host: freeAddr()}}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: freeAddr()}}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.EnableGRPCGateway = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		panic(err)
	}
	<-e.Server.ReadyNotify()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{cfg.ListenClientUrls[0].Host},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		panic(err)
	}
	return cli, func() {
		cli.Close()
		e.Close()
		os.RemoveAll(dir)
	}
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
