#!/bin/bash
set -u
echo "before: $(uptime)" > /tmp/ab/uptime.txt
for i in 1 2 3 4 5 6; do
  for x in ants old; do
    echo "=== round $i $x $(date +%T) $(cat /proc/loadavg)" >> /tmp/ab/progress.log
    ( cd /tmp/ab-$x/benchcmp && /tmp/ab-$x.test -test.run '^$' -test.bench 'Benchmark(Echo|Sleep)/impl=v4/' -test.benchmem -test.count 1 -test.benchtime 1s >> /tmp/ab/$x.txt 2>>/tmp/ab/$x.err )
    echo "    rc=$?" >> /tmp/ab/progress.log
  done
done
echo "after: $(uptime)" >> /tmp/ab/uptime.txt
