package epollbatch

import (
	"context"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
	"github.com/rpcsteps/rpcsteps/shared/service"
)

// Metadata is per-call metadata: string keys and values that travel with
// a request, as gRPC's metadata does, for what is about the call rather
// than its arguments: a trace context, an authentication token, a
// request ID. A caller puts it on the ctx of Call, Go or Notify with
// NewOutgoingContext; the server's interceptors and methods read it from
// their ctx with FromIncomingContext.
//
// On the wire it is an optional section of the request, announced by
// protocol.FlagMetadata (docs/protocol.md draws it): a request without
// metadata is the same bytes as before, and v1-v3 never send any. Its
// encoded size is bounded by MaxMetadataSize, and counts in the frame
// limit too. A call whose metadata is larger fails at once, with an
// error for which errors.Is(err, protocol.ErrMetadataTooLarge); a server
// answers a request whose metadata is too large or malformed with a
// ServerError.
type Metadata map[string]string

// MaxMetadataSize is the largest encoded metadata of a request: the keys,
// the values and 6 bytes per pair.
const MaxMetadataSize = protocol.DefaultMaxMetadataSize

type outgoingKey struct{}
type incomingKey struct{}

// NewOutgoingContext returns a copy of ctx that carries md: a call made
// with it sends md with its request. md is not copied: do not change it
// while calls made with the ctx may still be sending.
func NewOutgoingContext(ctx context.Context, md Metadata) context.Context {
	return context.WithValue(ctx, outgoingKey{}, md)
}

// FromOutgoingContext returns the metadata NewOutgoingContext put on ctx.
func FromOutgoingContext(ctx context.Context) (Metadata, bool) {
	md, ok := ctx.Value(outgoingKey{}).(Metadata)
	return md, ok
}

// FromIncomingContext returns the metadata the request carried, from the
// ctx of a method or a server interceptor; ok is false when it carried
// none. The map is the server's own copy.
func FromIncomingContext(ctx context.Context) (Metadata, bool) {
	md, ok := ctx.Value(incomingKey{}).(Metadata)
	return md, ok
}

// appendRequest encodes a request, with the metadata on ctx if there is
// any. Both engines' clients encode through it.
func appendRequest(ctx context.Context, dst []byte, typ protocol.Type, seq uint64, c codec.Codec, serviceMethod string, args any) ([]byte, error) {
	if md, _ := FromOutgoingContext(ctx); len(md) > 0 {
		return service.AppendRequestMetadata(ctx, dst, typ, seq, c, serviceMethod, args, md, MaxMetadataSize)
	}
	return service.AppendRequest(ctx, dst, typ, seq, c, serviceMethod, args)
}

// incoming takes a request's metadata off its body and onto ctx (the
// server's workers). The map copies the pairs: the request's buffer is
// reused once its method returns.
func incoming(ctx context.Context, f *protocol.Frame) (context.Context, error) {
	if f.Flags&protocol.FlagMetadata == 0 {
		return ctx, nil
	}
	block, payload, err := protocol.SplitMetadata(f.Body, MaxMetadataSize)
	if err != nil {
		return ctx, err
	}
	md := make(Metadata)
	protocol.RangeMetadata(block, func(k, v []byte) bool {
		md[string(k)] = string(v)
		return true
	})
	f.Body, f.Flags = payload, f.Flags&^protocol.FlagMetadata
	return context.WithValue(ctx, incomingKey{}, md), nil
}
