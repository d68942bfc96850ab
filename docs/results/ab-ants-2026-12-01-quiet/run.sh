#!/usr/bin/env bash
# Interleaved A/B of v4's worker pools: the binaries built by the first A/B
# (commit 384a524, only the pool differing: old-pool.diff).
cd /work/main/benchcmp
uptime > /tmp/ab2/uptime.txt
for round in 1 2 3 4 5 6; do
  for x in ants old; do
    /tmp/ab-$x.test -test.run '^$' -test.bench 'Benchmark(Echo|Sleep)/impl=v4/' -test.benchmem -test.count 1 -test.benchtime 1s >> /tmp/ab2/$x.txt
  done
done
uptime >> /tmp/ab2/uptime.txt
cd /work/main
go tool benchstat /tmp/ab2/old.txt /tmp/ab2/ants.txt > /tmp/ab2/benchstat.txt
for size in 64 4096; do
  go run ./benchcmp/cmd/loadgen -impl v4,v4-portable,v4-tls -callers 1,64,1024 -size $size -duration 5s > /tmp/ab2/loadgen-$size.txt 2>&1
done
uptime >> /tmp/ab2/uptime.txt
echo done > /tmp/ab2/DONE
