package ring

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// msg is what the concurrent tests send: who sent it and its rank among
// that producer's values.
type msg struct {
	prod, n int
}

func newRing[T any](t testing.TB, capacity int) *Ring[T] {
	t.Helper()
	r, err := New[T](capacity)
	require.NoError(t, err)
	return r
}

func TestNewCapacity(t *testing.T) {
	for _, tc := range []struct {
		capacity int
		ok       bool
	}{
		{-4, false}, {0, false}, {1, false}, {2, true}, {3, false}, {4, true},
		{6, false}, {64, true}, {1000, false}, {1024, true},
		{MaxCapacity - 1, false}, {MaxCapacity + 1, false}, {2 * MaxCapacity, false},
	} {
		t.Run(fmt.Sprint(tc.capacity), func(t *testing.T) {
			r, err := New[int](tc.capacity)
			if !tc.ok {
				require.ErrorIs(t, err, ErrCapacity)
				require.Contains(t, err.Error(), fmt.Sprint(tc.capacity))
				require.Nil(t, r)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.capacity, r.Cap())
			require.Zero(t, r.Len())
		})
	}
	// MaxCapacity itself is allowed; checked without allocating its slots.
	require.NoError(t, checkCapacity(MaxCapacity))
}

func TestTryPutUntilFull(t *testing.T) {
	r := newRing[int](t, 8)
	for i := range 8 {
		require.True(t, r.TryPut(i), "put %d", i)
		require.Equal(t, i+1, r.Len())
	}
	require.False(t, r.TryPut(8), "full")
	require.Equal(t, 8, r.Len())

	// One drained makes room for exactly one.
	require.Equal(t, []int{0}, r.Drain(nil, 1))
	require.True(t, r.TryPut(8))
	require.False(t, r.TryPut(9))
	require.Equal(t, []int{1, 2, 3, 4, 5, 6, 7, 8}, r.Drain(nil, 100))
}

func TestDrainOrderAndMax(t *testing.T) {
	r := newRing[string](t, 8)
	require.Empty(t, r.Drain(nil, 8), "empty ring")
	for _, s := range []string{"a", "b", "c", "d", "e"} {
		require.True(t, r.TryPut(s))
	}
	require.Empty(t, r.Drain(nil, 0), "max 0")
	require.Empty(t, r.Drain(nil, -1), "negative max")

	buf := make([]string, 0, 8)
	buf = append(buf, "kept")
	buf = r.Drain(buf, 2)
	require.Equal(t, []string{"kept", "a", "b"}, buf, "Drain appends")
	buf = r.Drain(buf[:0], 10)
	require.Equal(t, []string{"c", "d", "e"}, buf)
	require.Zero(t, r.Len())
}

func TestWrapAround(t *testing.T) {
	r := newRing[int](t, 4)
	next, want := 0, 0
	var buf []int
	// Batches of every size from 1 to 4, 1000 laps of the ring.
	for round := range 1000 {
		k := round%4 + 1
		for range k {
			require.True(t, r.TryPut(next))
			next++
		}
		buf = r.Drain(buf[:0], 4)
		require.Len(t, buf, k)
		for _, v := range buf {
			require.Equal(t, want, v)
			want++
		}
	}
	require.Equal(t, uint64(next), r.tail.Load())
	require.Equal(t, uint64(next), r.head.Load())
}

// TestWorkedExample replays the example of the package comment and checks
// every sequence number it shows.
func TestWorkedExample(t *testing.T) {
	r := newRing[string](t, 4)
	state := func(tail, head uint64, seqs ...uint64) {
		t.Helper()
		got := make([]uint64, len(r.slots))
		for i := range r.slots {
			got[i] = r.slots[i].seq.Load()
		}
		require.Equal(t, seqs, got, "seq")
		require.Equal(t, tail, r.tail.Load(), "tail")
		require.Equal(t, head, r.head.Load(), "head")
	}
	state(0, 0, 0, 1, 2, 3)

	pos, s, res := r.claim() // 1. A
	require.Equal(t, putOK, res)
	state(1, 0, 0, 1, 2, 3)
	r.publish(pos, s, "a1")
	state(1, 0, 1, 1, 2, 3)

	bPos, bSlot, res := r.claim() // 2. B claims, does not publish
	require.Equal(t, putOK, res)
	state(2, 0, 1, 1, 2, 3)

	require.True(t, r.TryPut("a2")) // 3.
	state(3, 0, 1, 1, 3, 3)

	require.Equal(t, []string{"a1"}, r.Drain(nil, 10)) // 4. a2 waits behind b1
	state(3, 1, 4, 1, 3, 3)

	r.publish(bPos, bSlot, "b1") // 5.
	state(3, 1, 4, 2, 3, 3)

	require.True(t, r.TryPut("a3")) // 6.
	state(4, 1, 4, 2, 3, 4)
	require.True(t, r.TryPut("b2")) // 7.
	state(5, 1, 5, 2, 3, 4)
	require.False(t, r.TryPut("a4")) // 8. full
	state(5, 1, 5, 2, 3, 4)

	require.Equal(t, []string{"b1", "a2", "a3", "b2"}, r.Drain(nil, 10)) // 9.
	state(5, 5, 8, 5, 6, 7)

	require.True(t, r.TryPut("a4")) // 10.
	state(6, 5, 8, 6, 6, 7)
	require.Equal(t, []string{"a4"}, r.Drain(nil, 10))
}

// TestDrainClearsSlots: a drained slot must not keep its value reachable.
func TestDrainClearsSlots(t *testing.T) {
	r := newRing[*[1 << 10]byte](t, 4)
	for range 3 {
		require.True(t, r.TryPut(new([1 << 10]byte)))
	}
	require.Len(t, r.Drain(nil, 2), 2)
	assert.Nil(t, r.slots[0].val)
	assert.Nil(t, r.slots[1].val)
	assert.NotNil(t, r.slots[2].val, "not drained yet")
	require.Len(t, r.Drain(nil, 2), 1)
	for i := range r.slots {
		assert.Nil(t, r.slots[i].val, "slot %d", i)
	}
}

// TestAgainstModel runs random TryPuts and Drains from one goroutine and
// compares the ring with a plain slice.
func TestAgainstModel(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		capacity := 2 << rng.IntN(5)
		r := newRing[int](t, capacity)
		var model, buf []int
		next := 0
		for op := range 2000 {
			if rng.IntN(3) < 2 {
				ok := r.TryPut(next)
				require.Equal(t, len(model) < capacity, ok, "seed %d op %d", seed, op)
				if ok {
					model = append(model, next)
				}
				next++
			} else {
				limit := rng.IntN(capacity+2) - 1
				buf = r.Drain(buf[:0], limit)
				want := model[:max(0, min(limit, len(model)))]
				require.True(t, slices.Equal(want, buf), "seed %d op %d: got %v, want %v", seed, op, buf, want)
				model = model[len(want):]
			}
			require.Equal(t, len(model), r.Len(), "seed %d op %d", seed, op)
		}
	}
}

// consume drains r until got returns false, checking that each producer's
// values arrive once each and in order; next[p] counts producer p's values.
func consume(t *testing.T, r *Ring[msg], next []int, batch int, more func() bool) {
	t.Helper()
	buf := make([]msg, 0, batch)
	deadline := time.Now().Add(20 * time.Second)
	for more() {
		buf = r.Drain(buf[:0], batch)
		if len(buf) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("stuck: received %v", next)
			}
			runtime.Gosched()
			continue
		}
		for _, m := range buf {
			if m.n != next[m.prod] {
				t.Fatalf("producer %d: got value %d, want %d", m.prod, m.n, next[m.prod])
			}
			next[m.prod]++
		}
	}
}

func TestManyProducers(t *testing.T) {
	const producers, each = 8, 10_000
	r := newRing[msg](t, 64) // small: producers find it full often
	var wg sync.WaitGroup
	defer wg.Wait()
	defer r.Close(nil) // if the test fails, release the producers
	for p := range producers {
		wg.Go(func() {
			for n := range each {
				if err := r.Put(context.Background(), msg{p, n}); err != nil {
					t.Errorf("producer %d: %v", p, err)
					return
				}
			}
		})
	}
	next := make([]int, producers)
	total := 0
	consume(t, r, next, 64, func() bool {
		total = 0
		for _, n := range next {
			total += n
		}
		return total < producers*each
	})
	wg.Wait()
	for p, n := range next {
		require.Equal(t, each, n, "producer %d", p)
	}
	require.Zero(t, r.Len())
	require.Empty(t, r.Drain(nil, 64))
}

// TestRandomInterleaving mixes Put and TryPut with random pauses, random
// batch sizes, and a Close at a random moment while producers are running.
// Whatever the interleaving: every value whose Put returned nil is drained
// exactly once, in order per producer, and no other value is.
func TestRandomInterleaving(t *testing.T) {
	for round := range uint64(40) {
		rng := rand.New(rand.NewPCG(round, 2))
		capacity := 2 << rng.IntN(6)
		producers := 1 + rng.IntN(6)
		each := 200 + rng.IntN(1000)
		closeAt := rng.IntN(producers * each * 3 / 2) // beyond the total: never
		batch := 1 + rng.IntN(2*capacity)
		t.Logf("round %d: capacity %d, %d producers × %d, close after %d, batch %d",
			round, capacity, producers, each, closeAt, batch)

		r := newRing[msg](t, capacity)
		cause := errors.New("round over")
		accepted := make([]int, producers)
		var wg sync.WaitGroup
		var running atomic.Int32
		running.Store(int32(producers))
		for p := range producers {
			prng := rand.New(rand.NewPCG(round, uint64(100+p)))
			wg.Go(func() {
				defer running.Add(-1)
				for n := range each {
					if prng.IntN(8) == 0 {
						runtime.Gosched()
					}
					var err error
					if prng.IntN(2) == 0 {
						err = r.Put(context.Background(), msg{p, n})
					} else {
						for !r.TryPut(msg{p, n}) {
							if err = r.Err(); err != nil {
								break
							}
							runtime.Gosched()
						}
					}
					if err != nil {
						if !errors.Is(err, cause) {
							t.Errorf("producer %d: %v", p, err)
						}
						return
					}
					accepted[p]++
				}
			})
		}
		next := make([]int, producers)
		received := 0
		consume(t, r, next, batch, func() bool {
			received = 0
			for _, n := range next {
				received += n
			}
			if received >= closeAt {
				r.Close(cause)
			}
			return running.Load() > 0
		})
		wg.Wait()
		// Producers are done: drain what is left.
		consume(t, r, next, batch, func() bool { return r.Len() > 0 })
		require.Equal(t, accepted, next, "round %d: accepted vs received", round)
		if closeAt >= producers*each {
			require.NoError(t, r.Err())
		}
		r.Close(nil)
	}
}

// fill returns a ring of capacity 2 holding 1 and 2.
func fill(t *testing.T) *Ring[int] {
	r := newRing[int](t, 2)
	require.True(t, r.TryPut(1))
	require.True(t, r.TryPut(2))
	return r
}

func TestPutWaitsForRoom(t *testing.T) {
	r := fill(t)
	done := make(chan error, 1)
	go func() { done <- r.Put(context.Background(), 3) }()
	time.Sleep(20 * time.Millisecond) // past the spins, into the sleeps
	select {
	case err := <-done:
		t.Fatalf("Put returned %v on a full ring", err)
	default:
	}
	require.Equal(t, []int{1}, r.Drain(nil, 1))
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(time.Second):
		t.Fatal("Put still waiting with room in the ring")
	}
	require.Equal(t, []int{2, 3}, r.Drain(nil, 10))
}

func TestPutDeadline(t *testing.T) {
	r := fill(t)
	const timeout = 30 * time.Millisecond
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := r.Put(ctx, 3)
	elapsed := time.Since(start)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorIs(t, err, ctx.Err())
	require.NotErrorIs(t, err, ErrClosed)
	assert.GreaterOrEqual(t, elapsed, timeout)
	assert.Less(t, elapsed, timeout+200*time.Millisecond, "Put must return promptly")
	require.Equal(t, []int{1, 2}, r.Drain(nil, 10), "ring unchanged")
}

func TestPutCanceled(t *testing.T) {
	r := fill(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	require.ErrorIs(t, r.Put(ctx, 3), context.Canceled)
	assert.Less(t, time.Since(start), 100*time.Millisecond)

	// ctx only bounds the wait: with room, Put succeeds.
	require.Equal(t, []int{1}, r.Drain(nil, 1))
	require.NoError(t, r.Put(ctx, 3))
}

func TestCloseWakesProducers(t *testing.T) {
	r := fill(t)
	const waiting = 4
	errs := make(chan error, waiting)
	for i := range waiting {
		go func() { errs <- r.Put(context.Background(), 10+i) }()
	}
	time.Sleep(20 * time.Millisecond) // let them reach their backoff sleeps
	cause := errors.New("connection reset")
	start := time.Now()
	r.Close(cause)
	for range waiting {
		select {
		case err := <-errs:
			require.ErrorIs(t, err, ErrClosed)
			require.ErrorIs(t, err, cause)
		case <-time.After(time.Second):
			t.Fatal("Close did not wake a waiting Put")
		}
	}
	assert.Less(t, time.Since(start), 100*time.Millisecond, "woken at once, not after a backoff")
	require.Equal(t, []int{1, 2}, r.Drain(nil, 10), "Close discards nothing")
}

func TestCloseErr(t *testing.T) {
	r := newRing[int](t, 4)
	require.NoError(t, r.Err())
	require.True(t, r.TryPut(1))

	first, second := errors.New("first"), errors.New("second")
	r.Close(first)
	r.Close(second)
	require.Equal(t, first, r.Err(), "the first Close wins")

	err := r.Put(context.Background(), 2)
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, err, first)
	require.NotErrorIs(t, err, second)
	require.False(t, r.TryPut(3))
	require.Equal(t, []int{1}, r.Drain(nil, 10), "Drain works after Close")

	r = newRing[int](t, 4)
	r.Close(nil)
	require.Equal(t, ErrClosed, r.Err())
	require.Equal(t, ErrClosed, r.Put(context.Background(), 1))

	r = newRing[int](t, 4)
	wrapped := fmt.Errorf("server stopping: %w", ErrClosed)
	r.Close(wrapped)
	require.Equal(t, wrapped, r.Err())
	require.Equal(t, wrapped, r.Put(context.Background(), 1))
}

func TestZeroAllocs(t *testing.T) {
	t.Run("struct", func(t *testing.T) { testZeroAllocs(t, msg{1, 2}) })
	t.Run("slice", func(t *testing.T) { testZeroAllocs(t, []byte("reply")) })
}

func testZeroAllocs[T any](t *testing.T, v T) {
	r := newRing[T](t, 64)
	ctx := context.Background()
	buf := make([]T, 0, 16)
	allocs := testing.AllocsPerRun(1000, func() {
		for range 15 {
			if err := r.Put(ctx, v); err != nil {
				panic(err)
			}
		}
		if !r.TryPut(v) {
			panic("full")
		}
		buf = r.Drain(buf[:0], cap(buf))
		if len(buf) != 16 {
			panic(len(buf))
		}
	})
	require.Zero(t, allocs)
}

func BenchmarkPutDrain(b *testing.B) {
	ctx := context.Background()
	b.Run("same-goroutine", func(b *testing.B) {
		r := newRing[msg](b, 1024)
		buf := make([]msg, 0, 64)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := r.Put(ctx, msg{0, i}); err != nil {
				b.Fatal(err)
			}
			if i%64 == 63 {
				buf = r.Drain(buf[:0], cap(buf))
			}
		}
	})
	b.Run("1-producer", func(b *testing.B) {
		r := newRing[msg](b, 1024)
		stop := startConsumer(r)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := r.Put(ctx, msg{0, i}); err != nil {
				b.Fatal(err)
			}
		}
		stop()
	})
}

// BenchmarkPutDrainParallel: GOMAXPROCS producers and one consumer
// goroutine; a buffered channel of the same capacity for comparison.
func BenchmarkPutDrainParallel(b *testing.B) {
	ctx := context.Background()
	b.Run("ring", func(b *testing.B) {
		r := newRing[msg](b, 1024)
		stop := startConsumer(r)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				if err := r.Put(ctx, msg{0, i}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		stop()
	})
	b.Run("chan", func(b *testing.B) {
		ch := make(chan msg, 1024)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range ch {
			}
		}()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				ch <- msg{0, i}
			}
		})
		close(ch)
		<-done
	})
}

// startConsumer drains r in a goroutine until the returned stop is called
// and the ring is empty.
func startConsumer(r *Ring[msg]) (stop func()) {
	var stopping atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]msg, 0, 64)
		for {
			// Read the flag before draining: if it was set, every Put has
			// returned, so an empty Drain means an empty ring for good.
			last := stopping.Load()
			buf = r.Drain(buf[:0], cap(buf))
			if len(buf) == 0 {
				if last {
					return
				}
				runtime.Gosched()
			}
		}
	}()
	return func() { stopping.Store(true); <-done }
}
