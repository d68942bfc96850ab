// Package soak holds a fault-injection soak test of the pipelined versions
// of rpcsteps (v3-pipeline and v4-epoll-batch), and the TCP proxy it runs
// their traffic through.
//
// The [Proxy] sits between a client and a server and damages the stream
// the way real networks do, at rates set by [Faults] and drawn from a
// seeded source: it splits each write into pieces cut at random points,
// delays pieces (a few milliseconds, sometimes tens), and resets
// connections at random moments (SetLinger(0) then Close on both sides,
// so that both peers see an RST, usually in the middle of a frame).
//
// TestSoak runs, for each version, a server and two clients dialled
// through the proxy (one Gob, one Raw over two connections), with 64
// goroutines making calls in a loop (Echo, a Sleep, a Fail), each with a
// deadline (2 s, one in 16 a few ms) and a payload only its caller could
// have sent. A call may fail (the resets see to that), but it must never
// return another call's reply or error, never write into its reply when
// it fails, never outlive its deadline by more than -soak.grace, and once
// everything is closed, goroutines and heap must come back to where they
// were. Only those, and panics, fail the test; the errors are counted by
// kind in its report, a line per version (and appended to the file
// $SOAK_REPORT names, if set).
//
// The grace is counted in time the process ran: three probe goroutines
// wait 5 ms at a time the way a call waits for its deadline (a timer
// starts a goroutine that wakes the waiter), and measure how long the
// whole process stalls (a 2-core machine shared with other builds, under
// -race, can stall it for hundreds of milliseconds). A late call's
// overshoot is reduced by the stalls it overlapped ("excused" in the
// report) before it is held against the library; a late call is reported
// with its stack, and the library's goroutines', taken while it was late.
//
// It runs for -soak.duration (2s by default, so that it fits in
// `make test`); `make soak` runs it for a minute:
//
//	go test -race -count=1 -run TestSoak ./internal/soak -soak.duration=60s -v
//
// -soak.seed replays the fault and payload choices of an earlier run (the
// seed is in its report line); the timing of the goroutines, and so the
// exact interleaving, cannot be replayed.
package soak
