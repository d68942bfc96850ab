package benchcmp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	epollbatch "github.com/rpcsteps/rpcsteps/v4-epoll-batch"
)

// v4Impls is v4 as users get it: the epoll reactors on Linux (the
// portable engine elsewhere).
func v4Impls() []Impl {
	return []Impl{v4Impl("v4", nil, nil)}
}

// Extras are implementations outside the grid of make bench-all, for
// loadgen -impl: v4 on its portable engine, and v4 over TLS (which runs
// on the portable engine).
func Extras() []Impl {
	return []Impl{
		v4Impl("v4-portable", []epollbatch.ServerOption{epollbatch.WithPortableEngine()}, []epollbatch.ClientOption{epollbatch.WithPortableEngine()}),
		v4TLSImpl(),
	}
}

func v4Impl(name string, sopts []epollbatch.ServerOption, copts []epollbatch.ClientOption) Impl {
	return Impl{
		Name: name,
		Serve: func(ln net.Listener) (func(), error) {
			s := epollbatch.NewServer(sopts...)
			return serveVersion(ln, s.Register, s.Serve, s.Close)
		},
		Dial: func(addr string) (Client, error) {
			c, err := epollbatch.Dial("tcp", addr, append([]epollbatch.ClientOption{epollbatch.WithCodec(codec.Raw)}, copts...)...)
			if err != nil {
				return nil, err
			}
			return v4Client{c}, nil
		},
	}
}

// v4TLSImpl serves TLS with a certificate made when it starts. The client
// does not verify it (InsecureSkipVerify): verifying costs once per
// connection, and a benchmark measures the calls.
func v4TLSImpl() Impl {
	plain := v4Impl("v4-tls", nil, []epollbatch.ClientOption{epollbatch.WithTLSConfig(&tls.Config{InsecureSkipVerify: true})})
	serve := plain.Serve
	plain.Serve = func(ln net.Listener) (func(), error) {
		cert, err := selfSigned()
		if err != nil {
			return nil, err
		}
		return serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}))
	}
	return plain
}

// selfSigned makes a certificate for 127.0.0.1.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "benchcmp"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// v4Client reports how many requests its reactor wrote per writev.
type v4Client struct{ *epollbatch.Client }

func (c v4Client) FramesPerWrite() float64 {
	st := c.Stats()
	if st.Writes == 0 {
		return 0
	}
	return float64(st.Frames) / float64(st.Writes)
}
