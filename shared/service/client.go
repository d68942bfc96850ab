package service

import (
	"context"
	"time"

	"github.com/rpcsteps/rpcsteps/shared/codec"
	"github.com/rpcsteps/rpcsteps/shared/protocol"
)

// AppendRequest appends to dst a request frame of type typ (TypeRequest or
// TypeOneway) calling serviceMethod with args encoded by c. The frame
// carries seq and, when ctx has a deadline, the time left until it. On
// error dst is returned unchanged.
func AppendRequest(ctx context.Context, dst []byte, typ protocol.Type, seq uint64, c codec.Codec, serviceMethod string, args any) ([]byte, error) {
	return AppendRequestMetadata(ctx, dst, typ, seq, c, serviceMethod, args, nil, 0)
}

// AppendRequestMetadata is AppendRequest for a call carrying metadata: when
// md is not empty, the frame carries FlagMetadata and its body starts with
// the metadata block of md (see protocol.AppendMetadata), followed by the
// encoded args. maxMD is the largest block accepted
// (protocol.DefaultMaxMetadataSize when maxMD <= 0); a larger one is an
// error wrapping protocol.ErrMetadataTooLarge. With an empty md the frame is
// exactly AppendRequest's. On error dst is returned unchanged.
func AppendRequestMetadata(ctx context.Context, dst []byte, typ protocol.Type, seq uint64, c codec.Codec, serviceMethod string, args any, md map[string]string, maxMD int) ([]byte, error) {
	h := protocol.Header{Type: typ, Codec: c.ID(), Seq: seq}
	if d, ok := ctx.Deadline(); ok {
		h.Budget, h.Flags = protocol.BudgetUntil(d, true, time.Now())
	}
	if len(md) > 0 {
		h.Flags |= protocol.FlagMetadata
	}
	start := len(dst)
	buf, err := protocol.BeginFrame(dst, &h, serviceMethod, "")
	if err != nil {
		return dst, err
	}
	if len(md) > 0 {
		if buf, err = protocol.AppendMetadata(buf, md, maxMD); err != nil {
			return dst, err
		}
	}
	if buf, err = c.Marshal(buf, args); err != nil {
		return dst, err
	}
	if err = protocol.FinishFrame(buf[start:]); err != nil {
		return dst, err
	}
	return buf, nil
}

// DecodeReply gives the outcome of a call from its reply frame: the
// ServerError it carries, or nil after decoding its body into reply with the
// frame's codec. A nil reply discards the body.
func DecodeReply(f *protocol.Frame, reply any) error {
	if f.Flags&protocol.FlagError != 0 {
		return ServerError(f.Error)
	}
	if reply == nil {
		return nil
	}
	c, err := codec.Lookup(f.Codec)
	if err != nil {
		return err
	}
	return c.Unmarshal(f.Body, reply)
}
