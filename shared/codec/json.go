package codec

import (
	"encoding/json"
	"fmt"
)

// JSON is encoding/json: readable on the wire, slower than Gob and Raw.
var JSON Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) Name() string { return "json" }
func (jsonCodec) ID() uint8    { return JSONID }

func (jsonCodec) Marshal(dst []byte, v any) ([]byte, error) {
	w := appendWriter{b: dst}
	if err := json.NewEncoder(&w).Encode(v); err != nil {
		return dst, fmt.Errorf("codec json: encode %T: %w", v, err)
	}
	return w.b, nil
}

func (jsonCodec) Unmarshal(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("codec json: decode into %T: %w", v, err)
	}
	return nil
}
