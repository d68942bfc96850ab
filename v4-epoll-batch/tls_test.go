package epollbatch

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	mathbig "math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
)

// testCA is a certificate authority made at run time, and the leaf
// certificates it signs (for 127.0.0.1 and localhost).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          mathbig.NewInt(1),
		Subject:               pkix.Name{CommonName: "rpcsteps test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf signs a certificate for 127.0.0.1 and localhost, for a server or
// a client.
func (ca *testCA) leaf(t testing.TB, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: mathbig.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serveTLS serves s on a TLS listener with cfg and returns its address.
func serveTLS(t *testing.T, s *Server, cfg *tls.Config) string {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- s.Serve(tls.NewListener(inner, cfg)) }()
	t.Cleanup(func() {
		s.Close()
		require.ErrorIs(t, <-served, ErrServerClosed)
	})
	return inner.Addr().String()
}

func echoServer() *Server {
	s := NewServer()
	if err := s.RegisterName("echo", echo{}); err != nil {
		panic(err)
	}
	return s
}

// Calls over TLS: Serve(tls.NewListener(...)) and WithTLSConfig, with the
// portable engine on both sides, many calls at once on one connection.
func TestTLSCalls(t *testing.T) {
	ca := newTestCA(t)
	s := echoServer()
	addr := serveTLS(t, s, &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "server")}})
	c, err := Dial("tcp", addr, WithTLSConfig(&tls.Config{RootCAs: ca.pool}), WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan *Call, 64)
	for i := range 64 {
		c.Go(ctx, "echo.Echo", []byte(strings.Repeat("x", i*100)), new([]byte), done)
	}
	for range 64 {
		call := <-done
		require.NoError(t, call.Error)
		require.Equal(t, string(call.Args.([]byte)), string(*call.Reply.(*[]byte)))
	}
	require.Equal(t, 1, s.Stats().Conns)
	require.Equal(t, 1, c.Stats().Conns)
}

// Mutual TLS: the server asks for a client certificate signed by its CA;
// a client without one is refused at the handshake, within Dial.
func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	s := echoServer()
	addr := serveTLS(t, s, &tls.Config{
		Certificates: []tls.Certificate{ca.leaf(t, "server")},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
	})
	c, err := Dial("tcp", addr, WithCodec(codec.Raw), WithTLSConfig(&tls.Config{
		RootCAs:      ca.pool,
		Certificates: []tls.Certificate{ca.leaf(t, "client")},
	}))
	require.NoError(t, err)
	defer c.Close()
	var got []byte
	require.NoError(t, c.Call(context.Background(), "echo.Echo", []byte("mutual"), &got))
	require.Equal(t, "mutual", string(got))

	// Without a client certificate, TLS 1.3 lets the handshake end on the
	// client's side; the server's refusal arrives with the first read.
	// Either Dial or the first call fails, with the TLS error.
	anon, err := Dial("tcp", addr, WithCodec(codec.Raw), WithTLSConfig(&tls.Config{RootCAs: ca.pool}))
	if err == nil {
		defer anon.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = anon.Call(ctx, "echo.Echo", []byte("anonymous"), new([]byte))
	}
	require.Error(t, err)
	require.NotErrorIs(t, err, context.DeadlineExceeded, "refused by a hang, not an error")
	require.ErrorContains(t, err, "certificate")
}

// A certificate the client does not trust: Dial fails with the reason.
func TestTLSBadCertificate(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	s := echoServer()
	addr := serveTLS(t, s, &tls.Config{Certificates: []tls.Certificate{other.leaf(t, "stranger")}})
	_, err := Dial("tcp", addr, WithTLSConfig(&tls.Config{RootCAs: ca.pool}))
	require.Error(t, err)
	var unknown x509.UnknownAuthorityError
	require.True(t, errors.As(err, &unknown), "got %v", err)
	require.ErrorContains(t, err, "TLS handshake")
}

// A plaintext client against a TLS server: the server takes its frame
// for a bad TLS record and closes; the call fails at once, it does not
// hang. A TLS client against a plaintext server: the server takes the
// ClientHello for a bad frame and closes; Dial fails with the handshake.
func TestTLSAgainstPlaintext(t *testing.T) {
	ca := newTestCA(t)
	tlsAddr := serveTLS(t, echoServer(), &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "server")}})
	plain, err := Dial("tcp", tlsAddr, WithCodec(codec.Raw))
	require.NoError(t, err) // TCP connects
	defer plain.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = plain.Call(ctx, "echo.Echo", []byte("in the clear"), new([]byte))
	require.Error(t, err)
	require.NoError(t, ctx.Err(), "the call hung")

	plainSrv := echoServer()
	plainAddr := serveForTest(t, plainSrv)
	start := time.Now()
	_, err = Dial("tcp", plainAddr, WithTLSConfig(&tls.Config{RootCAs: ca.pool}))
	require.Error(t, err)
	require.ErrorContains(t, err, "TLS handshake")
	require.Less(t, time.Since(start), 5*time.Second)
}

// The handshake is bounded by the dial timeout: a server that accepts
// and never answers makes Dial fail once the timeout is over.
func TestTLSHandshakeWithinDialTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			defer nc.Close() // holds the connection, says nothing
		}
	}()
	start := time.Now()
	_, err = Dial("tcp", ln.Addr().String(), WithDialTimeout(200*time.Millisecond), WithTLSConfig(&tls.Config{}))
	require.Error(t, err)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second)
}

// slowListener delays each Accept, so that a TLS handshake (which the
// server starts once it has accepted) takes that long.
type slowListener struct {
	net.Listener
	delay time.Duration
}

func (l slowListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	time.Sleep(l.delay)
	return nc, err
}

// A dial that fails because the caller who started it gave up (its ctx
// ended) says nothing of the server: the next caller dials again, instead
// of failing at once with the first caller's timeout as the slot's error.
func TestDialCutShortByItsCallerDoesNotFailOthers(t *testing.T) {
	ca := newTestCA(t)
	s := echoServer()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() {
		served <- s.Serve(tls.NewListener(slowListener{inner, 150 * time.Millisecond}, &tls.Config{Certificates: []tls.Certificate{ca.leaf(t, "server")}}))
	}()
	defer func() { s.Close(); <-served }()
	c, err := Dial("tcp", inner.Addr().String(), WithConns(2), WithCodec(codec.Raw), WithTLSConfig(&tls.Config{RootCAs: ca.pool}))
	require.NoError(t, err) // slot 0, in 150 ms
	defer c.Close()

	short, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = c.Call(short, "echo.Echo", []byte("a"), new([]byte)) // slot 1: its dial outlives the ctx
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, c.Call(context.Background(), "echo.Echo", []byte("b"), new([]byte))) // slot 0
	ctx, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	require.NoError(t, c.Call(ctx, "echo.Echo", []byte("c"), new([]byte)), "slot 1 failed with the first caller's timeout")
}
