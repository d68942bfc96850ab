package codec

import "fmt"

// Raw passes bytes through untouched: it encodes a []byte or *[]byte (nil
// encodes as no bytes) and decodes into a *[]byte, reusing the capacity the
// slice already has. Any other type is ErrUnsupportedType. It is the codec
// of benchmarks and proxies, where encoding is not what is measured.
var Raw Codec = rawCodec{}

type rawCodec struct{}

func (rawCodec) Name() string { return "raw" }
func (rawCodec) ID() uint8    { return RawID }

func (rawCodec) Marshal(dst []byte, v any) ([]byte, error) {
	switch b := v.(type) {
	case []byte:
		return append(dst, b...), nil
	case *[]byte:
		if b == nil {
			return dst, nil
		}
		return append(dst, *b...), nil
	case nil:
		return dst, nil
	}
	return dst, fmt.Errorf("%w: raw codec encodes []byte or *[]byte, not %T", ErrUnsupportedType, v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok || p == nil {
		return fmt.Errorf("%w: raw codec decodes into a non-nil *[]byte, not %T", ErrUnsupportedType, v)
	}
	*p = append((*p)[:0], data...)
	return nil
}
