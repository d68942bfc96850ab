package codec

import (
	"bytes"
	"encoding/gob"
	"fmt"
)

// Gob is the default codec: encoding/gob, one self-contained message per
// body. net/rpc keeps one gob stream per connection and sends each type's
// description once; a stateless message repeats it, which costs bytes and
// time for struct types but lets any frame be decoded alone, whichever
// connection or order it arrived in.
var Gob Codec = gobCodec{}

type gobCodec struct{}

func (gobCodec) Name() string { return "gob" }
func (gobCodec) ID() uint8    { return GobID }

func (gobCodec) Marshal(dst []byte, v any) ([]byte, error) {
	w := appendWriter{b: dst}
	if err := gob.NewEncoder(&w).Encode(v); err != nil {
		return dst, fmt.Errorf("codec gob: encode %T: %w", v, err)
	}
	return w.b, nil
}

func (gobCodec) Unmarshal(data []byte, v any) error {
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(v); err != nil {
		return fmt.Errorf("codec gob: decode into %T: %w", v, err)
	}
	return nil
}
