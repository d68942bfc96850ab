package benchcmp

import (
	"context"
	"net"
	"net/rpc"
	"sync"
)

// netrpcImpl is the baseline: Go's net/rpc with its default gob codec, one
// connection shared by all callers.
func netrpcImpl() Impl {
	return Impl{
		Name: "netrpc",
		Serve: func(ln net.Listener) (func(), error) {
			srv := rpc.NewServer()
			if err := srv.Register(Echo{}); err != nil {
				return nil, err
			}
			return serveConns(ln, func(c net.Conn) { srv.ServeConn(c) }), nil
		},
		Dial: func(addr string) (Client, error) {
			c, err := rpc.Dial("tcp", addr)
			if err != nil {
				return nil, err
			}
			return netrpcClient{c}, nil
		},
	}
}

// serveConns accepts connections on ln and serves each on its own
// goroutine until the returned stop closes the listener and the
// connections and waits for the goroutines. (rpc.Server.Accept would log
// to the standard logger when the listener closes.)
func serveConns(ln net.Listener, serve func(net.Conn)) (stop func()) {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				serve(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	return func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

// netrpcClient gives net/rpc's client the contract's ctx-first Call.
type netrpcClient struct{ c *rpc.Client }

func (n netrpcClient) Call(ctx context.Context, method string, args, reply any) error {
	if ctx.Done() == nil {
		return n.c.Call(method, args, reply)
	}
	call := n.c.Go(method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		return call.Error
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n netrpcClient) Close() error { return n.c.Close() }
