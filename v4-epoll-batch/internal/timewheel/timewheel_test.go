package timewheel

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The tests drive time themselves: start is the wheel's origin, and
// ms(n) is n milliseconds after it. No test sleeps.
var start = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func ms(n int) time.Time { return start.Add(time.Duration(n) * time.Millisecond) }

func newWheel(t testing.TB, tick time.Duration, slots int) *Wheel[int] {
	t.Helper()
	w, err := New[int](tick, slots, start)
	require.NoError(t, err)
	return w
}

// advance calls Advance with a fresh slice and returns the keys sorted.
func advance(w *Wheel[int], now time.Time) []int {
	got := w.Advance(now, nil)
	slices.Sort(got)
	return got
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		tick  time.Duration
		slots int
		err   error
	}{
		{time.Millisecond, 1, nil},
		{time.Second, 512, nil},
		{1, MaxSlots, nil},
		{0, 8, ErrTick},
		{-time.Second, 8, ErrTick},
		{time.Second, 0, ErrSlots},
		{time.Second, -1, ErrSlots},
		{time.Second, MaxSlots + 1, ErrSlots},
	} {
		t.Run(fmt.Sprint(tc.tick, "/", tc.slots), func(t *testing.T) {
			w, err := New[string](tc.tick, tc.slots, start)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.Nil(t, w)
				return
			}
			require.NoError(t, err)
			require.Zero(t, w.Len())
			_, ok := w.Next(start)
			require.False(t, ok)
			require.Empty(t, w.Advance(start.Add(time.Hour), nil))
		})
	}
}

// Every deadline from before the origin to several revolutions ahead, at
// 1ms steps with a 10ms tick: the key expires at the first tick boundary at
// or after its deadline, so never early and less than a tick late.
func TestExpiryAtTick(t *testing.T) {
	const tick = 10 * time.Millisecond
	for _, slots := range []int{1, 3, 8} {
		for d := -15; d <= 300; d++ {
			w := newWheel(t, tick, slots)
			deadline := ms(d)
			w.Set(1, deadline)
			boundary := 0 // the deadline rounded up to the tick, in ms
			if d > 0 {
				boundary = (d + 9) / 10 * 10
			}
			// Advance 1ms at a time until the key expires.
			now := 0
			for ; now <= 310; now++ {
				if got := w.Advance(ms(now), nil); len(got) > 0 {
					require.Equal(t, []int{1}, got)
					break
				}
			}
			at := ms(now)
			msg := fmt.Sprintf("slots %d, deadline %dms, expired at %dms", slots, d, now)
			require.Equal(t, boundary, now, msg)
			if d >= 0 {
				require.False(t, at.Before(deadline), msg)
				require.Less(t, at.Sub(deadline), tick, msg)
			}
			require.Zero(t, w.Len(), msg)
		}
	}
}

func TestExactBoundary(t *testing.T) {
	w := newWheel(t, 10*time.Millisecond, 8)
	w.Set(1, ms(30)) // on a boundary: no rounding
	w.Set(2, ms(31)) // rounded up to 40ms
	require.Empty(t, advance(w, ms(29)))
	require.Equal(t, []int{1}, advance(w, ms(30)))
	require.Empty(t, advance(w, ms(39)))
	require.Equal(t, []int{2}, advance(w, ms(40)))
	// A nanosecond matters: just before the boundary, nothing.
	w.Set(3, ms(50))
	require.Empty(t, advance(w, ms(50).Add(-1)))
	require.Equal(t, []int{3}, advance(w, ms(50)))
}

// Deadlines several revolutions ahead stay in their slot while the wheel
// passes it, until their own tick.
func TestRounds(t *testing.T) {
	w := newWheel(t, 10*time.Millisecond, 4) // one revolution: 40ms
	w.Set(1, ms(125))                        // tick 13, slot 1: visited at ticks 1, 5, 9, 13
	w.Set(2, ms(1000))                       // tick 100, 25 revolutions
	w.Set(3, ms(15))                         // tick 2, first revolution
	for now := 0; now <= 1000; now += 10 {
		got := advance(w, ms(now))
		switch now {
		case 20:
			require.Equal(t, []int{3}, got)
		case 130:
			require.Equal(t, []int{1}, got, "at %dms", now)
		case 1000:
			require.Equal(t, []int{2}, got)
		default:
			require.Empty(t, got, "at %dms", now)
		}
	}
	require.Zero(t, w.Len())
}

func TestRemove(t *testing.T) {
	w := newWheel(t, 10*time.Millisecond, 8)
	w.Set(1, ms(30))
	w.Set(2, ms(30))
	w.Set(3, ms(500)) // a later revolution
	w.Set(4, ms(-5))  // already due
	require.Equal(t, 4, w.Len())
	w.Remove(1)
	w.Remove(3)
	w.Remove(4)
	w.Remove(99) // not scheduled: no-op
	require.Equal(t, 1, w.Len())
	require.Equal(t, []int{2}, advance(w, ms(1000)))
	require.Zero(t, w.Len())
	// A removed key can be set again.
	w.Remove(2)
	w.Set(1, ms(1010))
	require.Equal(t, []int{1}, advance(w, ms(1010)))
}

// Re-Set moves a deadline later, in the same slot (a later revolution) or
// another: the key does not expire at the old time.
func TestResetLater(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new int
	}{
		{"same tick", 21, 29},
		{"same slot", 30, 80}, // ticks 3 and 8, 5 slots
		{"other slot", 30, 60},
		{"from due", -10, 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWheel(t, 10*time.Millisecond, 5)
			w.Set(1, ms(tc.old))
			w.Set(1, ms(tc.new))
			require.Equal(t, 1, w.Len())
			newTick := (tc.new + 9) / 10 * 10
			for now := 0; now < newTick; now++ {
				require.Empty(t, advance(w, ms(now)), "at %dms", now)
			}
			require.Equal(t, []int{1}, advance(w, ms(newTick)))
			require.Zero(t, w.Len())
		})
	}
}

// Re-Set moves a deadline earlier, and to a time already passed.
func TestResetEarlier(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new int
	}{
		{"same slot", 80, 30},
		{"other slot", 60, 30},
		{"revolutions", 10000, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWheel(t, 10*time.Millisecond, 5)
			w.Set(1, ms(tc.old))
			w.Set(1, ms(tc.new))
			require.Empty(t, advance(w, ms(29)))
			require.Equal(t, []int{1}, advance(w, ms(30)))
		})
	}
	t.Run("passed", func(t *testing.T) {
		w := newWheel(t, 10*time.Millisecond, 5)
		require.Empty(t, advance(w, ms(55)))
		w.Set(1, ms(500))
		w.Set(1, ms(50)) // before the last boundary passed
		w.Set(2, ms(54)) // after it, but before now: waits for 60ms
		w.Set(3, time.Time{})
		// The next Advance expires 1 and 3 even with the same now.
		require.Equal(t, []int{1, 3}, advance(w, ms(55)))
		require.Equal(t, []int{2}, advance(w, ms(60)))
	})
}

// A reactor that was busy for many revolutions advances once: everything
// due comes out of that one call, and nothing else.
func TestAdvanceManyTicks(t *testing.T) {
	const tick = 10 * time.Millisecond
	w := newWheel(t, tick, 16)
	rng := rand.New(rand.NewPCG(1, 2))
	deadline := map[int]int{}
	for k := range 2000 {
		d := rng.IntN(50_000) // up to 5000 ticks, ~300 revolutions
		deadline[k] = d
		w.Set(k, ms(d))
	}
	var want []int
	for k, d := range deadline {
		if d <= 20_000 {
			want = append(want, k)
		}
	}
	slices.Sort(want)
	require.Equal(t, want, advance(w, ms(20_000)))
	rest := w.Len()
	require.Equal(t, len(deadline)-len(want), rest)
	require.Len(t, advance(w, ms(50_000)), rest)
	require.Zero(t, w.Len())
}

// Less than a revolution passed: the keys come in the order of their ticks.
func TestAdvanceOrder(t *testing.T) {
	w := newWheel(t, 10*time.Millisecond, 8)
	w.Set(1, ms(65))
	w.Set(2, ms(12))
	w.Set(3, ms(40))
	w.Set(4, ms(-1))
	require.Equal(t, []int{4, 2, 3, 1}, w.Advance(ms(75), nil))
}

func TestAdvanceAppends(t *testing.T) {
	w := newWheel(t, time.Second, 8)
	w.Set(1, ms(1000))
	got := w.Advance(ms(1000), []int{7, 8})
	require.Equal(t, []int{7, 8, 1}, got)
}

// The wheel's time does not go back: an earlier now expires only what is
// already due.
func TestTimeBackwards(t *testing.T) {
	w := newWheel(t, 10*time.Millisecond, 8)
	require.Empty(t, advance(w, ms(100)))
	w.Set(1, ms(110))
	w.Set(2, ms(90)) // due
	require.Equal(t, []int{2}, advance(w, ms(50)))
	require.Empty(t, advance(w, ms(-50)))
	require.Equal(t, []int{1}, advance(w, ms(110)))
}

// Deadlines so far away that the duration from the origin saturates.
func TestFarDeadline(t *testing.T) {
	w := newWheel(t, time.Millisecond, 8)
	w.Set(1, start.AddDate(1000, 0, 0))
	wait, ok := w.Next(start)
	require.True(t, ok)
	require.Greater(t, wait, time.Duration(0))
	require.Empty(t, advance(w, start.AddDate(1, 0, 0)))
	require.Equal(t, 1, w.Len())
}

// With the real clock: monotonic readings, as a reactor would pass them.
func TestMonotonicClock(t *testing.T) {
	now := time.Now()
	w, err := New[string](100*time.Millisecond, 64, now)
	require.NoError(t, err)
	w.Set("a", now.Add(250*time.Millisecond))
	wait, ok := w.Next(now)
	require.True(t, ok)
	require.Equal(t, 300*time.Millisecond, wait)
	require.Empty(t, w.Advance(now.Add(299*time.Millisecond), nil))
	require.Equal(t, []string{"a"}, w.Advance(now.Add(300*time.Millisecond), nil))
}

func TestNext(t *testing.T) {
	w := newWheel(t, 10*time.Millisecond, 8)
	_, ok := w.Next(start)
	require.False(t, ok, "empty")

	w.Set(1, ms(25)) // expires at 30ms
	for _, tc := range []struct{ now, want int }{
		{0, 30}, {7, 23}, {29, 1}, {30, 0}, {45, 0}, {-20, 50},
	} {
		wait, ok := w.Next(ms(tc.now))
		require.True(t, ok)
		require.Equal(t, time.Duration(tc.want)*time.Millisecond, wait, "now %dms", tc.now)
	}

	w.Set(2, ms(-1)) // due: advance at once
	wait, ok := w.Next(start)
	require.True(t, ok)
	require.Zero(t, wait)

	w.Remove(2)
	w.Remove(1)
	_, ok = w.Next(start)
	require.False(t, ok, "empty again")
}

// Next points at the first non-empty slot, which may hold only keys of a
// later revolution: early, never late. A reactor that follows it reaches
// each expiry at its boundary, waking once per revolution meanwhile.
func TestNextFollowed(t *testing.T) {
	const tick = 10 * time.Millisecond
	w := newWheel(t, tick, 4)
	w.Set(1, ms(125)) // tick 13
	w.Set(2, ms(300)) // tick 30
	now := start
	var wakes []int
	expiredAt := map[int]time.Duration{}
	for w.Len() > 0 {
		wait, ok := w.Next(now)
		require.True(t, ok)
		require.Positive(t, wait, "nothing due after an Advance: no spinning")
		now = now.Add(wait)
		wakes = append(wakes, int(now.Sub(start)/time.Millisecond))
		for _, k := range w.Advance(now, nil) {
			expiredAt[k] = now.Sub(start)
		}
	}
	require.Equal(t, map[int]time.Duration{1: 130 * time.Millisecond, 2: 300 * time.Millisecond}, expiredAt)
	require.Equal(t, []int{10, 20, 50, 60, 90, 100, 130, 140, 180, 220, 260, 300}, wakes)
}

func TestLen(t *testing.T) {
	w := newWheel(t, 10*time.Millisecond, 8)
	for k := range 10 {
		w.Set(k, ms(10*k))
	}
	require.Equal(t, 10, w.Len())
	w.Set(3, ms(500)) // re-Set: same count
	require.Equal(t, 10, w.Len())
	w.Remove(4)
	require.Equal(t, 9, w.Len())
	require.Equal(t, []int{0, 1, 2, 5}, advance(w, ms(50)))
	require.Equal(t, 5, w.Len()) // 3, 6, 7, 8, 9
}

// model is what the wheel must do, stated without ticks: the wheel has
// passed every tick boundary at or before the latest now it was given (or
// the origin), and a key is expired by the first Advance after a passed
// boundary is at or after its deadline.
type model struct {
	tick     time.Duration
	passed   time.Time // the latest boundary passed
	deadline map[int]time.Time
}

// boundaryAtOrBefore returns the last tick boundary at or before t.
func (m *model) boundaryAtOrBefore(t time.Time) time.Time {
	b := start.Add(t.Sub(start).Truncate(m.tick))
	if b.After(t) {
		b = b.Add(-m.tick)
	}
	return b
}

func (m *model) advance(now time.Time) []int {
	if b := m.boundaryAtOrBefore(now); b.After(m.passed) {
		m.passed = b
	}
	var due []int
	for k, d := range m.deadline {
		if !d.After(m.passed) {
			due = append(due, k)
			delete(m.deadline, k)
		}
	}
	slices.Sort(due)
	return due
}

// expiresAt returns the boundary at which the earliest key expires.
func (m *model) expiresAt() time.Time {
	var first time.Time
	for _, d := range m.deadline {
		b := m.boundaryAtOrBefore(d)
		if b.Before(d) {
			b = b.Add(m.tick)
		}
		if first.IsZero() || b.Before(first) {
			first = b
		}
	}
	return first
}

func TestModel(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			tick := time.Duration(1+rng.IntN(20)) * time.Millisecond
			// Few slots, for many revolutions, or more than one word of
			// the busy bitmap.
			slots := []int{1, 2, 3, 5, 8, 16, 63, 64, 65, 130}[seed%10]
			w := newWheel(t, tick, slots)
			m := &model{tick: tick, passed: start, deadline: map[int]time.Time{}}
			keys := 1 + rng.IntN(64)
			now := start
			// A time near now: on a tick boundary or not, sometimes in
			// the past, up to three revolutions ahead.
			near := func() time.Time {
				span := 3 * int64(slots) * int64(tick)
				d := time.Duration(rng.Int64N(span+4*int64(tick)) - 4*int64(tick))
				if rng.IntN(3) == 0 {
					d = d.Truncate(tick)
				}
				return m.boundaryAtOrBefore(now).Add(d)
			}
			var expired []int
			for step := range 3000 {
				switch r := rng.IntN(10); {
				case r < 5:
					k, d := rng.IntN(keys), near()
					w.Set(k, d)
					m.deadline[k] = d
				case r < 6:
					k := rng.IntN(keys)
					w.Remove(k)
					delete(m.deadline, k)
				default:
					switch rng.IntN(8) {
					case 0: // a long jump: several revolutions
						now = now.Add(time.Duration(rng.Int64N(5 * int64(slots) * int64(tick))))
					case 1: // back in time
						now = now.Add(-time.Duration(rng.Int64N(3 * int64(tick))))
					default:
						now = near()
					}
					expired = w.Advance(now, expired[:0])
					slices.Sort(expired)
					want := m.advance(now)
					require.Equal(t, len(want), len(expired), "step %d", step)
					if len(want) > 0 {
						require.Equal(t, want, expired, "step %d", step)
					}
				}
				require.Equal(t, len(m.deadline), w.Len(), "step %d", step)

				wait, ok := w.Next(now)
				require.Equal(t, len(m.deadline) > 0, ok, "step %d", step)
				if !ok {
					continue
				}
				// Never later than the earliest expiry, and on a
				// boundary not yet passed unless something is due.
				first := m.expiresAt()
				if first.After(now) {
					require.False(t, now.Add(wait).After(first), "step %d", step)
				} else {
					require.Zero(t, wait, "step %d", step)
				}
				if wait > 0 {
					wake := now.Add(wait)
					require.Equal(t, wake, m.boundaryAtOrBefore(wake), "step %d", step)
					require.True(t, wake.After(m.passed), "step %d", step)
				}
			}
		})
	}
}

func TestZeroAllocs(t *testing.T) {
	const n = 1000
	const tick = 10 * time.Millisecond
	w := newWheel(t, tick, 64)
	for k := range n {
		w.Set(k, ms(k))
	}
	t.Run("re-Set", func(t *testing.T) {
		i := 0
		require.Zero(t, testing.AllocsPerRun(1000, func() {
			i++
			// Moving ahead: same slot, other slots and revolutions.
			w.Set(i%n, ms(i*7))
		}))
	})
	t.Run("Remove+Set", func(t *testing.T) {
		i := 0
		require.Zero(t, testing.AllocsPerRun(1000, func() {
			i++
			w.Remove(i % n)
			w.Set(i%n, ms(i*3))
		}))
	})
	t.Run("Advance", func(t *testing.T) {
		expired := make([]int, 0, n)
		now := ms(0)
		require.Zero(t, testing.AllocsPerRun(1000, func() {
			// Expire a tick's worth of keys and schedule them again.
			now = now.Add(tick)
			expired = w.Advance(now, expired[:0])
			for _, k := range expired {
				w.Set(k, now.Add(time.Duration(k)*time.Millisecond))
			}
		}))
		require.Equal(t, n, w.Len())
	})
}

// 10,000 connections, all busy: every read pushes the idle deadline (30s)
// forward. With a 1s tick it stays in its slot; with a 1ms tick, time moves
// a tick between two reads of a connection, and the key changes slots.
func BenchmarkSet(b *testing.B) {
	const n = 10_000
	for _, bc := range []struct {
		name string
		tick time.Duration
	}{{"same-slot", time.Second}, {"next-slot", time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			w, err := New[int](bc.tick, 512, start)
			require.NoError(b, err)
			for k := range n {
				w.Set(k, start.Add(30*time.Second))
			}
			now := start
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				k := i % n
				if k == 0 {
					now = now.Add(time.Millisecond)
				}
				w.Set(k, now.Add(30*time.Second))
			}
		})
	}
}

// 10,000 connections with deadlines spread over the wheel; each Advance
// passes one tick, expires that tick's keys and schedules them again.
func BenchmarkAdvance(b *testing.B) {
	const n = 10_000
	const tick = 10 * time.Millisecond
	const slots = 512
	w, err := New[int](tick, slots, start)
	require.NoError(b, err)
	for k := range n {
		w.Set(k, start.Add(time.Duration(k%(2*slots))*tick))
	}
	expired := make([]int, 0, n)
	now := start
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(tick)
		expired = w.Advance(now, expired[:0])
		for _, k := range expired {
			w.Set(k, now.Add(2*slots*tick))
		}
	}
}
