package main

import (
	"bytes"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The demo prints what the chapter (../README.md) says it prints.
func TestDemoOutput(t *testing.T) {
	var out bytes.Buffer
	require.NoError(t, run(&out, 100))
	want := `server listening on 127\.0\.0\.1:\d+
Arith\.Add\(2, 3\) = 5
Arith\.Div\(1, 0\) failed: divide by zero \(ServerError: true\)
Arith\.Slow with a 50ms deadline: pipeline: call Arith\.Slow: context deadline exceeded \(DeadlineExceeded: true\)
three Go calls: \[10 11 12\]
Notify: the server logged "hello, one way"
100 calls: 0 TCP connections accepted
sockets in TIME_WAIT on the server's port: \d+
100 calls, one caller, took \S+: \d+ calls/s \(your numbers will differ\)
client: 1 connection, 1 dialed
1 ms method, 64 callers, 1 connection: \d+ requests in \d+ writes
64 calls took \S+: \d+ calls/s \(your numbers will differ\)
server shut down
`
	require.Regexp(t, regexp.MustCompile("^"+want+"$"), out.String())
}
