package codec

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzUnmarshal: arbitrary bytes, decoded by every codec into several kinds
// of value, give an error or a value, never a panic.
func FuzzUnmarshal(f *testing.F) {
	for _, c := range []Codec{Raw, Gob, JSON} {
		b, _ := c.Marshal(nil, []byte("seed"))
		f.Add(c.ID(), b)
	}
	b, _ := Gob.Marshal(nil, Point{X: 1, Name: "n", Tags: map[string]int{"k": 2}})
	f.Add(GobID, b)
	b, _ = JSON.Marshal(nil, Point{X: 1, Name: "n"})
	f.Add(JSONID, b)
	f.Add(uint8(9), []byte("no such codec"))
	f.Fuzz(func(t *testing.T, id uint8, data []byte) {
		c, err := Lookup(id)
		if err != nil {
			return
		}
		_ = c.Unmarshal(data, new(Point))
		_ = c.Unmarshal(data, new([]byte))
		_ = c.Unmarshal(data, new(map[string][]int))
		_ = c.Unmarshal(data, new(int64))
	})
}

// FuzzRoundTrip: a value survives every codec that can carry it.
func FuzzRoundTrip(f *testing.F) {
	f.Add(int64(1), "name", []byte("payload"))
	f.Add(int64(-1<<63), "", []byte(nil))
	f.Fuzz(func(t *testing.T, n int64, s string, payload []byte) {
		for _, c := range []Codec{Gob, JSON} {
			in := Point{X: int(n), Name: s}
			if c == JSON && !validUTF8(s) {
				continue // JSON replaces invalid UTF-8
			}
			b, err := c.Marshal(nil, in)
			if err != nil {
				t.Fatal(err)
			}
			var out Point
			if err := c.Unmarshal(b, &out); err != nil {
				t.Fatalf("%s: %v", c.Name(), err)
			}
			if !reflect.DeepEqual(in, out) {
				t.Fatalf("%s: got %+v, want %+v", c.Name(), out, in)
			}
		}
		b, err := Raw.Marshal(nil, payload)
		if err != nil {
			t.Fatal(err)
		}
		var out []byte
		if err := Raw.Unmarshal(b, &out); err != nil || !bytes.Equal(out, payload) {
			t.Fatalf("raw: %q, %v", out, err)
		}
	})
}

func validUTF8(s string) bool {
	for _, r := range s {
		if r == '\uFFFD' {
			return false
		}
	}
	return true
}
