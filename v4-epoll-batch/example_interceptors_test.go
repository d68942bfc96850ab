package epollbatch_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"time"

	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// A TLS server and client: the server serves a tls.NewListener, the
// client dials with WithTLSConfig. (The certificate is made here; a real
// one comes from a file or a certificate authority.)
func ExampleWithTLSConfig() {
	cert, pool := exampleCertificate()
	srv := epollbatch.NewServer()
	if err := srv.Register(Arith{}); err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	defer srv.Close()

	c, err := epollbatch.Dial("tcp", ln.Addr().String(), epollbatch.WithTLSConfig(&tls.Config{RootCAs: pool}))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	var sum int
	err = c.Call(context.Background(), "Arith.Add", Args{40, 2}, &sum)
	fmt.Println(sum, err)
	// Output: 42 <nil>
}

// A logging and latency interceptor on each side, with log/slog. (The
// handler drops the time and the latency, so that the output is the same
// on every run.)
func ExampleWithServerInterceptors() {
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey || a.Key == "latency" {
				return slog.Attr{}
			}
			return a
		},
	}))
	logCalls := func(side string) func(context.Context, string, any, any, func(context.Context) error) error {
		return func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
			start := time.Now()
			err := invoke(ctx)
			logger.Info(side, "method", method, "args", args, "err", err, "latency", time.Since(start))
			return err
		}
	}
	srv := epollbatch.NewServer(epollbatch.WithServerInterceptors(logCalls("server")))
	if err := srv.Register(Arith{}); err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	c, err := epollbatch.Dial("tcp", ln.Addr().String(), epollbatch.WithClientInterceptors(logCalls("client")))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	var q int
	c.Call(context.Background(), "Arith.Div", Args{7, 2}, &q)
	c.Call(context.Background(), "Arith.Div", Args{7, 0}, &q)
	// Output:
	// level=INFO msg=server method=Arith.Div args="{A:7 B:2}" err=<nil>
	// level=INFO msg=client method=Arith.Div args="{A:7 B:2}" err=<nil>
	// level=INFO msg=server method=Arith.Div args="{A:7 B:0}" err="divide by zero"
	// level=INFO msg=client method=Arith.Div args="{A:7 B:0}" err="divide by zero"
}

// An authentication interceptor: a call without the right token in its
// metadata is refused before the method runs. The client puts the token
// on the call's ctx with NewOutgoingContext.
func ExampleFromIncomingContext() {
	requireToken := func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
		md, _ := epollbatch.FromIncomingContext(ctx)
		if md["authorization"] != "Bearer s3cret" {
			return errors.New("unauthenticated: " + method + " needs a token")
		}
		return invoke(ctx)
	}
	srv := epollbatch.NewServer(epollbatch.WithServerInterceptors(requireToken))
	if err := srv.Register(Arith{}); err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	c, err := epollbatch.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	defer c.Close()

	var sum int
	err = c.Call(context.Background(), "Arith.Add", Args{1, 2}, &sum)
	fmt.Println(err)
	ctx := epollbatch.NewOutgoingContext(context.Background(), epollbatch.Metadata{"authorization": "Bearer s3cret"})
	err = c.Call(ctx, "Arith.Add", Args{1, 2}, &sum)
	fmt.Println(sum, err)
	// Output:
	// unauthenticated: Arith.Add needs a token
	// 3 <nil>
}

// exampleCertificate makes a self-signed certificate for 127.0.0.1, and
// a pool that trusts it.
func exampleCertificate() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "example"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}
