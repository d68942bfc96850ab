package codec

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type Point struct {
	X, Y int
	Name string
	Tags map[string]int
}

func TestRoundTrip(t *testing.T) {
	in := Point{X: 1, Y: -2, Name: "p", Tags: map[string]int{"a": 1}}
	for _, c := range []Codec{Gob, JSON} {
		t.Run(c.Name(), func(t *testing.T) {
			prefix := []byte("keep me")
			b, err := c.Marshal(append([]byte(nil), prefix...), in)
			require.NoError(t, err)
			require.Equal(t, prefix, b[:len(prefix)], "Marshal appends")

			var out Point
			require.NoError(t, c.Unmarshal(b[len(prefix):], &out))
			require.Equal(t, in, out)

			// builtin types as args and replies
			b, err = c.Marshal(nil, []byte("bytes"))
			require.NoError(t, err)
			var raw []byte
			require.NoError(t, c.Unmarshal(b, &raw))
			require.Equal(t, "bytes", string(raw))

			b, err = c.Marshal(nil, 42)
			require.NoError(t, err)
			var n int
			require.NoError(t, c.Unmarshal(b, &n))
			require.Equal(t, 42, n)
		})
	}
}

func TestRaw(t *testing.T) {
	b, err := Raw.Marshal([]byte("pre:"), []byte("payload"))
	require.NoError(t, err)
	require.Equal(t, "pre:payload", string(b))

	p := []byte("ptr")
	b, err = Raw.Marshal(nil, &p)
	require.NoError(t, err)
	require.Equal(t, "ptr", string(b))

	for _, v := range []any{nil, (*[]byte)(nil), []byte(nil)} {
		b, err = Raw.Marshal([]byte("x"), v)
		require.NoError(t, err)
		require.Equal(t, "x", string(b))
	}

	_, err = Raw.Marshal(nil, "a string")
	require.ErrorIs(t, err, ErrUnsupportedType)

	// Unmarshal copies (the data is reused) and reuses the reply's capacity.
	data := []byte("reply")
	out := make([]byte, 0, 64)
	before := &out[:1][0]
	require.NoError(t, Raw.Unmarshal(data, &out))
	data[0] = 'X'
	require.Equal(t, "reply", string(out))
	require.Same(t, before, &out[0])

	require.ErrorIs(t, Raw.Unmarshal(data, out), ErrUnsupportedType)
	require.ErrorIs(t, Raw.Unmarshal(data, (*[]byte)(nil)), ErrUnsupportedType)
	require.ErrorIs(t, Raw.Unmarshal(data, new(string)), ErrUnsupportedType)
}

func TestRawAllocs(t *testing.T) {
	// Call's args are an interface already: box the payload once, as Call does.
	var payload any = make([]byte, 4096)
	dst := make([]byte, 0, 8192)
	out := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if dst, err = Raw.Marshal(dst[:0], payload); err != nil {
			t.Fatal(err)
		}
		if err := Raw.Unmarshal(dst, &out); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
}

func TestUndecodable(t *testing.T) {
	for _, c := range []Codec{Gob, JSON} {
		var p Point
		err := c.Unmarshal([]byte("\x00\xffgarbage"), &p)
		require.Error(t, err, c.Name())
		require.Contains(t, err.Error(), "codec "+c.Name())

		_, err = c.Marshal(nil, make(chan int))
		require.Error(t, err, c.Name())
	}
}

func TestLookup(t *testing.T) {
	for _, c := range []Codec{Raw, Gob, JSON} {
		got, err := Lookup(c.ID())
		require.NoError(t, err)
		require.Equal(t, c, got)
	}
	assert.Equal(t, []uint8{1, 2, 3}, []uint8{Raw.ID(), Gob.ID(), JSON.ID()})
	for _, id := range []uint8{0, 4, 200, 255} {
		_, err := Lookup(id)
		require.ErrorIs(t, err, ErrUnknownCodec)
	}
}

type upper struct{ id uint8 }

func (u upper) Name() string                            { return "upper" }
func (u upper) ID() uint8                               { return u.id }
func (upper) Marshal(dst []byte, v any) ([]byte, error) { return Raw.Marshal(dst, v) }
func (upper) Unmarshal(data []byte, v any) error        { return Raw.Unmarshal(data, v) }

func TestRegister(t *testing.T) {
	t.Cleanup(func() { registered.Store(nil) })
	require.Error(t, Register(upper{id: 0}), "0 is never valid")
	require.Error(t, Register(upper{id: 3}), "reserved")

	require.NoError(t, Register(upper{id: 99}))
	c, err := Lookup(99)
	require.NoError(t, err)
	require.Equal(t, "upper", c.Name())
	_, err = Lookup(GobID)
	require.NoError(t, err, "built-ins stay")

	err = Register(upper{id: 99})
	require.Error(t, err)
	require.Contains(t, err.Error(), "taken")
	require.False(t, errors.Is(err, ErrUnknownCodec))
}
