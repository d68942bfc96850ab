package protocol

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// mdBody returns a request body carrying md ahead of payload, as a caller
// setting FlagMetadata writes it.
func mdBody(md map[string]string, payload string) string {
	return mdBodyMax(md, payload, 0)
}

func mdBodyMax(md map[string]string, payload string, max int) string {
	b, err := AppendMetadata(nil, md, max)
	if err != nil {
		panic(err)
	}
	return string(append(b, payload...))
}

// collect returns the pairs of a block as a map, and how many there were.
func collect(md []byte) (map[string]string, int) {
	m := map[string]string{}
	n := 0
	RangeMetadata(md, func(k, v []byte) bool {
		m[string(k)] = string(v)
		n++
		return true
	})
	return m, n
}

// The block is drawn in docs/protocol.md: keep the two in step.
func TestMetadataLayout(t *testing.T) {
	b, err := AppendMetadata([]byte("prefix"), map[string]string{"trace": "ab12", "a": ""}, 0)
	require.NoError(t, err)
	want := []byte{
		0, 0, 0, 22, // mdlen: (6+1+0) + (6+5+4)
		0, 1, 'a', // klen, key: sorted, "a" first
		0, 0, 0, 0, // vlen, empty value
		0, 5, 't', 'r', 'a', 'c', 'e', // klen, key
		0, 0, 0, 4, 'a', 'b', '1', '2', // vlen, value
	}
	require.Equal(t, "prefix", string(b[:6]))
	require.Equal(t, want, b[6:])
}

func TestMetadataRoundTrip(t *testing.T) {
	many := map[string]string{}
	for i := range 100 {
		many[fmt.Sprint("key-", i)] = strings.Repeat("v", i)
	}
	tests := []struct {
		name string
		md   map[string]string
	}{
		{"nil", nil},
		{"one pair", map[string]string{"authorization": "Bearer x"}},
		{"empty key and value", map[string]string{"": ""}},
		{"binary", map[string]string{"k\x00\xff": "\x00\x01\x02", "\xff": "\xff\xfe"}},
		{"longest key", map[string]string{strings.Repeat("k", math.MaxUint16): "v"}},
		{"more keys than the sort's stack", many},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := mdBodyMax(tt.md, "payload", math.MaxInt32)
			md, payload, err := SplitMetadata([]byte(body), math.MaxInt32)
			require.NoError(t, err)
			require.Equal(t, "payload", string(payload))
			got, n := collect(md)
			require.Equal(t, len(tt.md), n)
			if len(tt.md) == 0 {
				require.Empty(t, got)
				require.Empty(t, md)
				return
			}
			require.Equal(t, tt.md, got)

			// The keys are visited in sorted order, and the same map always
			// gives the same bytes, whatever the map's iteration order.
			var prev []byte
			RangeMetadata(md, func(k, _ []byte) bool {
				require.True(t, prev == nil || bytes.Compare(prev, k) < 0, "%q after %q", k, prev)
				prev = k
				return true
			})
			for range 10 {
				require.Equal(t, body, mdBodyMax(tt.md, "payload", math.MaxInt32))
			}
		})
	}
}

// A request carrying metadata is an ordinary frame: both decoders give its
// body back whole, metadata included.
func TestFrameWithMetadata(t *testing.T) {
	md := map[string]string{"request-id": "42", "tenant": "acme"}
	s := sample{h: Header{Type: TypeRequest, Codec: 3, Flags: FlagMetadata | FlagDeadline, Seq: 5, Budget: 2 * time.Second}, method: "Echo.Echo", body: mdBody(md, `"hi"`)}
	wire := s.encode(t)
	var f Frame
	n, err := Parse(wire, 0, &f)
	require.NoError(t, err)
	require.Equal(t, len(wire), n)
	s.check(t, &f)
	require.NotZero(t, f.Flags&FlagMetadata)

	block, payload, err := SplitMetadata(f.Body, 0)
	require.NoError(t, err)
	require.Equal(t, `"hi"`, string(payload))
	got, _ := collect(block)
	require.Equal(t, md, got)

	// and the frame limit counts the block.
	_, err = Parse(wire, len(wire)-1, &f)
	require.ErrorIs(t, err, ErrFrameTooLarge)
}

func TestAppendMetadataErrors(t *testing.T) {
	pair := func(klen, vlen int) map[string]string {
		return map[string]string{strings.Repeat("k", klen): strings.Repeat("v", vlen)}
	}
	tests := []struct {
		name    string
		md      map[string]string
		max     int
		wantErr string // "" means success
	}{
		{"default limit, exactly", pair(10, DefaultMaxMetadataSize-pairOverhead-10), 0, ""},
		{"default limit, one byte over", pair(10, DefaultMaxMetadataSize-pairOverhead-10+1), 0, "block of 65537 bytes, limit 65536"},
		{"negative max is the default", pair(10, DefaultMaxMetadataSize), -1, "limit 65536"},
		{"small limit, exactly", pair(1, 1), pairOverhead + 2, ""},
		{"small limit, over", pair(1, 2), pairOverhead + 2, "block of 9 bytes, limit 8"},
		{"over the limit in sum", map[string]string{"a": "1234", "b": "1234"}, 15, "block of 22 bytes, limit 15"},
		{"key too long", pair(math.MaxUint16+1, 0), math.MaxInt, "key of 65536 bytes (limit 65535)"},
		{"large limit", pair(1, 1<<20), 2 << 20, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, 4, 8)
			copy(dst, "keep")
			got, err := AppendMetadata(dst, tt.md, tt.max)
			if tt.wantErr == "" {
				require.NoError(t, err)
				require.Equal(t, "keep", string(got[:4]))
				_, _, err = SplitMetadata(got[4:], tt.max)
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrMetadataTooLarge)
			require.ErrorContains(t, err, tt.wantErr)
			require.Equal(t, "keep", string(got), "nothing appended")
			require.Equal(t, 8, cap(got), "nothing grown")
		})
	}
}

// block returns a body made of an mdlen and the given bytes.
func block(mdlen uint32, rest ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, mdlen), rest...)
}

func TestSplitMetadataErrors(t *testing.T) {
	tests := []struct {
		name    string
		body    []byte
		max     int
		want    error
		wantErr string
	}{
		{"empty body", nil, 0, ErrBadMetadata, "a body of 0 bytes cannot hold the block's length"},
		{"three bytes", []byte{0, 0, 0}, 0, ErrBadMetadata, "a body of 3 bytes"},
		{"block overruns the body", block(7, 0, 1, 'k', 0, 0, 0), 0, ErrBadMetadata, "block of 7 bytes announced in a body of 10"},
		{"4 GiB block", block(math.MaxUint32), math.MaxInt, ErrBadMetadata, "block of 4294967295 bytes announced"},
		{"over the default limit", block(DefaultMaxMetadataSize + 1), 0, ErrMetadataTooLarge, "block of 65537 bytes announced, limit 65536"},
		{"over a small limit", block(7, 0, 1, 'k', 0, 0, 0, 0), 6, ErrMetadataTooLarge, "limit 6"},
		{"one byte of key length", block(1, 0), 0, ErrBadMetadata, "pair at offset 0: 1 bytes cannot hold a key length"},
		{"key overruns", block(3, 0, 2, 'k'), 0, ErrBadMetadata, "pair at offset 0: key of 2 bytes overruns the block"},
		{"no value length", block(5, 0, 1, 'k', 0, 0), 0, ErrBadMetadata, "pair at offset 0: 2 bytes cannot hold a value length"},
		{"value overruns", block(8, 0, 1, 'k', 0, 0, 0, 2, 'v'), 0, ErrBadMetadata, "pair at offset 0: value of 2 bytes overruns the block"},
		{"value overruns into the payload", block(8, 0, 1, 'k', 0, 0, 0, 2, 'v', 'p'), 0, ErrBadMetadata, "value of 2 bytes overruns the block"},
		{"second pair truncated", block(8, 0, 1, 'k', 0, 0, 0, 0, 0), 0, ErrBadMetadata, "pair at offset 7: 1 bytes cannot hold a key length"},
		{"4 GiB value", block(7, 0, 0, 0xff, 0xff, 0xff, 0xff, 0), 0, ErrBadMetadata, "value of 4294967295 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.max == math.MaxInt && strconv.IntSize == 32 {
				t.Skip("on 32 bits no limit an int can say is above 4 GiB: the block is refused as too large instead")
			}
			md, payload, err := SplitMetadata(tt.body, tt.max)
			require.ErrorIs(t, err, tt.want)
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, md)
			require.Nil(t, payload)
		})
	}

	// The limit is inclusive, and an empty block is valid.
	_, _, err := SplitMetadata(block(7, 0, 1, 'k', 0, 0, 0, 0), 7)
	require.NoError(t, err)
	md, payload, err := SplitMetadata(block(0, 'p'), 0)
	require.NoError(t, err)
	require.Empty(t, md)
	require.Equal(t, "p", string(payload))
}

// The block, its pairs and the payload alias the body but cannot overwrite
// each other.
func TestMetadataDoesNotOverlap(t *testing.T) {
	body := []byte(mdBody(map[string]string{"k": "v", "l": "w"}, "payload"))
	md, payload, err := SplitMetadata(body, 0)
	require.NoError(t, err)
	_ = append(md, 'X')
	RangeMetadata(md, func(k, v []byte) bool {
		_ = append(k, 'X')
		_ = append(v, 'X')
		return true
	})
	got, _ := collect(md)
	require.Equal(t, map[string]string{"k": "v", "l": "w"}, got)
	require.Equal(t, "payload", string(payload))
}

func TestRangeMetadataStops(t *testing.T) {
	md, _, err := SplitMetadata([]byte(mdBody(map[string]string{"a": "1", "b": "2", "c": "3"}, "")), 0)
	require.NoError(t, err)
	var keys []string
	RangeMetadata(md, func(k, _ []byte) bool {
		keys = append(keys, string(k))
		return len(keys) < 2
	})
	require.Equal(t, []string{"a", "b"}, keys)

	// Given bytes SplitMetadata refuses, it visits the whole pairs in front
	// of the bad one and stops.
	bad := [][]byte{
		{0},
		{0, 2, 'k'},
		{0, 1, 'k', 0, 0, 0},
		{0, 1, 'k', 0, 0, 0, 9, 'v'},
		{0, 1, 'k', 0, 0, 0, 1, 'v', 0xff, 0xff},
	}
	for _, b := range bad {
		_, n := collect(b)
		require.LessOrEqual(t, n, 1, "%x", b)
	}
}

func TestMetadataAllocs(t *testing.T) {
	md := map[string]string{"authorization": "Bearer x", "request-id": "42", "tenant": "acme"}
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if buf, err = AppendMetadata(buf[:0], md, 0); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs, "AppendMetadata into a buffer with room")

	body := append(buf, "payload"...)
	pairs := 0
	allocs = testing.AllocsPerRun(100, func() {
		block, _, err := SplitMetadata(body, 0)
		if err != nil {
			t.Fatal(err)
		}
		RangeMetadata(block, func(k, v []byte) bool { pairs++; return true })
	})
	require.Zero(t, allocs, "SplitMetadata and RangeMetadata")
	require.Equal(t, 3*101, pairs)
}
