package epollbatch

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
	pipeline "github.com/rpcsteps/rpcsteps/v3-pipeline"
)

// recorder is a chain of interceptors that write down the order they ran
// in, and what they saw.
type recorder struct {
	mu    sync.Mutex
	trace []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.trace = append(r.trace, s)
	r.mu.Unlock()
}

func (r *recorder) icpt(name string) func(context.Context, string, any, any, func(context.Context) error) error {
	return func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
		r.add(name + " before " + method)
		err := invoke(ctx)
		r.add(name + " after")
		return err
	}
}

// mdEcho answers with the metadata value its argument names, and whether
// its ctx had a deadline.
type mdEcho struct{}

func (mdEcho) Get(ctx context.Context, key []byte, reply *[]byte) error {
	md, ok := FromIncomingContext(ctx)
	if !ok {
		return errors.New("no metadata")
	}
	*reply = []byte(md[string(key)])
	return nil
}

func (mdEcho) Panic([]byte, *[]byte) error { panic("boom") }

func newInterceptServer(t *testing.T, opts ...ServerOption) string {
	t.Helper()
	s := NewServer(opts...)
	require.NoError(t, s.RegisterName("md", mdEcho{}))
	require.NoError(t, s.RegisterName("echo", echo{}))
	return serveForTest(t, s)
}

// Chains run first-given outermost, on both sides; Call, Go and Notify
// all go through the client's.
func TestInterceptorChainOrder(t *testing.T) {
	var srv, cli recorder
	addr := newInterceptServer(t, WithServerInterceptors(srv.icpt("s1"), srv.icpt("s2")), WithServerInterceptors(srv.icpt("s3")))
	c, err := Dial("tcp", addr, WithCodec(codec.Raw), WithClientInterceptors(cli.icpt("c1"), cli.icpt("c2")))
	require.NoError(t, err)
	defer c.Close()
	var got []byte
	require.NoError(t, c.Call(context.Background(), "echo.Echo", []byte("x"), &got))
	require.Equal(t, []string{"s1 before echo.Echo", "s2 before echo.Echo", "s3 before echo.Echo", "s3 after", "s2 after", "s1 after"}, srv.trace)
	require.Equal(t, []string{"c1 before echo.Echo", "c2 before echo.Echo", "c2 after", "c1 after"}, cli.trace)

	call := <-c.Go(context.Background(), "echo.Echo", []byte("y"), &got, nil).Done
	require.NoError(t, call.Error)
	require.Equal(t, "y", string(got))
	require.NoError(t, c.Notify(context.Background(), "echo.Echo", []byte("z")))
	require.Len(t, cli.trace, 12)
}

// A server interceptor sees the caller's deadline and metadata, the
// decoded arguments and, after invoke, the reply; one that refuses
// answers with its error, and the method does not run.
func TestServerInterceptorSees(t *testing.T) {
	type seen struct {
		deadline bool
		md       Metadata
		args     string
		reply    string
	}
	saw := make(chan seen, 1)
	look := func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
		_, dl := ctx.Deadline()
		md, _ := FromIncomingContext(ctx)
		err := invoke(ctx)
		saw <- seen{dl, md, string(args.([]byte)), string(*reply.(*[]byte))}
		return err
	}
	refuse := func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
		if strings.HasPrefix(string(args.([]byte)), "forbidden") {
			return errors.New("refused by the interceptor")
		}
		return invoke(ctx)
	}
	addr := newInterceptServer(t, WithServerInterceptors(look, refuse))
	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(NewOutgoingContext(context.Background(), Metadata{"trace-id": "abc", "user": "ann"}), 5*time.Second)
	defer cancel()
	var got []byte
	require.NoError(t, c.Call(ctx, "md.Get", []byte("user"), &got))
	require.Equal(t, "ann", string(got))
	require.Equal(t, seen{true, Metadata{"trace-id": "abc", "user": "ann"}, "user", "ann"}, <-saw)

	err = c.Call(ctx, "md.Get", []byte("forbidden"), &got)
	var se ServerError
	require.True(t, errors.As(err, &se))
	require.Equal(t, "refused by the interceptor", string(se))
	<-saw
}

// Panics: in a server interceptor, answered as a method's panic is; in a
// client interceptor, the call's error. Neither takes a process down.
func TestInterceptorPanics(t *testing.T) {
	panicky := func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
		if method == "echo.Echo" && string(args.([]byte)) == "panic" {
			panic("interceptor boom")
		}
		return invoke(ctx)
	}
	addr := newInterceptServer(t, WithServerInterceptors(panicky))
	c, err := Dial("tcp", addr, WithCodec(codec.Raw), WithClientInterceptors(func(ctx context.Context, method string, args, reply any, invoke func(context.Context) error) error {
		if string(args.([]byte)) == "client panic" {
			panic("client boom")
		}
		return invoke(ctx)
	}))
	require.NoError(t, err)
	defer c.Close()
	var se ServerError
	err = c.Call(context.Background(), "echo.Echo", []byte("panic"), new([]byte))
	require.True(t, errors.As(err, &se), "got %v", err)
	require.Contains(t, err.Error(), "interceptor boom")
	err = c.Call(context.Background(), "md.Panic", []byte("x"), new([]byte))
	require.True(t, errors.As(err, &se), "got %v", err)
	require.Contains(t, err.Error(), "boom")

	err = c.Call(context.Background(), "echo.Echo", []byte("client panic"), new([]byte))
	require.ErrorContains(t, err, "client interceptor panicked: client boom")
	call := <-c.Go(context.Background(), "echo.Echo", []byte("client panic"), new([]byte), nil).Done
	require.ErrorContains(t, call.Error, "client boom")
	require.NoError(t, c.Call(context.Background(), "echo.Echo", []byte("fine"), new([]byte)), "the connection is still usable")
}

// Metadata larger than MaxMetadataSize fails the call at once, on the
// client, with a clear error; the connection stays usable. A server that
// gets a too large or malformed block (from a raw peer) answers with a
// ServerError.
func TestMetadataTooLarge(t *testing.T) {
	addr := newInterceptServer(t)
	c, err := Dial("tcp", addr, WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	ctx := NewOutgoingContext(context.Background(), Metadata{"big": strings.Repeat("x", MaxMetadataSize)})
	err = c.Call(ctx, "md.Get", []byte("big"), new([]byte))
	require.ErrorIs(t, err, protocol.ErrMetadataTooLarge)
	require.ErrorContains(t, err, "metadata too large")

	ctx = NewOutgoingContext(context.Background(), Metadata{"k": "v"})
	var got []byte
	require.NoError(t, c.Call(ctx, "md.Get", []byte("k"), &got))
	require.Equal(t, "v", string(got))

	// A raw frame whose metadata block announces more than it holds.
	h := protocol.Header{Type: protocol.TypeRequest, Codec: codec.Raw.ID(), Flags: protocol.FlagMetadata, Seq: 9}
	bad, err := protocol.AppendFrame(nil, &h, "md.Get", "", []byte{0, 0, 0, 200, 0, 1, 'k'})
	require.NoError(t, err)
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer nc.Close()
	_, err = nc.Write(bad)
	require.NoError(t, err)
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var f protocol.Frame
	_, err = protocol.ReadFrame(bufio.NewReader(nc), 0, &f, nil)
	require.NoError(t, err)
	require.Equal(t, uint64(9), f.Seq)
	require.Contains(t, string(f.Error), "metadata")
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// Old and new on the wire: a v3 client (which knows nothing of
// metadata) calls a v4 server; a v4 client's request without metadata
// is the bytes v1-v3 send; and a v4 client with metadata calls a v3
// server, whose registry skips the block.
func TestMetadataAcrossVersions(t *testing.T) {
	addr := newInterceptServer(t)
	old, err := pipeline.Dial("tcp", addr, pipeline.WithCodec(codec.Raw))
	require.NoError(t, err)
	defer old.Close()
	var got []byte
	require.NoError(t, old.Call(context.Background(), "echo.Echo", []byte("from v3"), &got))
	require.Equal(t, "from v3", string(got))

	plain, err := appendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Raw, "echo.Echo", []byte("x"))
	require.NoError(t, err)
	want, err := service.AppendRequest(context.Background(), nil, protocol.TypeRequest, 1, codec.Raw, "echo.Echo", []byte("x"))
	require.NoError(t, err)
	require.Equal(t, want, plain, "a request without metadata changed on the wire")

	v3srv := pipeline.NewServer()
	require.NoError(t, v3srv.RegisterName("echo", echo{}))
	ln := listen(t)
	go v3srv.Serve(ln)
	defer v3srv.Close()
	c, err := Dial("tcp", ln.Addr().String(), WithCodec(codec.Raw))
	require.NoError(t, err)
	defer c.Close()
	ctx := NewOutgoingContext(context.Background(), Metadata{"trace-id": "t1"})
	require.NoError(t, c.Call(ctx, "echo.Echo", []byte("to v3"), &got))
	require.Equal(t, "to v3", string(got))
}
