# rpcsteps: `make` lists the targets. The two that matter most:
#   make bench-all   run the benchmark grid and print the comparison tables
#   make test        everything CI checks

SHELL     := /bin/bash
GO        ?= go
PKGS      ?= ./...
# bench-all: -count 6 is the least benchstat needs for a confidence interval.
COUNT     ?= 6
BENCHTIME ?= 1s
BENCH     ?= .
RESULTS   ?= results
FUZZTIME  ?= 2m

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "  variables: COUNT=$(COUNT) BENCHTIME=$(BENCHTIME) BENCH=$(BENCH) FUZZTIME=$(FUZZTIME)"
	@echo "  e.g. make bench-all COUNT=10 BENCHTIME=3s;  make diff FROM=v1 TO=v2"

.PHONY: test
test: fmt-check vet staticcheck race bench-smoke ## gofmt, vet, staticcheck, race tests with fuzz seeds, benchmarks once

.PHONY: fmt-check
fmt-check:
	@echo "== gofmt"
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

.PHONY: vet
vet:
	@echo "== go vet"
	$(GO) vet $(PKGS)
	@echo "== go vet, GOOS=darwin, windows and freebsd (v4's portable engine serves there)"
	GOOS=darwin $(GO) vet $(PKGS)
	GOOS=windows $(GO) vet $(PKGS)
	GOOS=freebsd $(GO) vet $(PKGS)
	@echo "== go vet, GOARCH=386 (32 bits: an int holds no 4 GiB length)"
	GOARCH=386 $(GO) vet $(PKGS)
	$(GO) vet -tags rpcsteps_portable ./v4-epoll-batch/...
	@echo "== go vet, the etcd module (a module of its own: ./... above does not enter it)"
	cd v4-epoll-batch/etcd && $(GO) vet ./... && GOOS=darwin $(GO) vet ./...

.PHONY: staticcheck
staticcheck:
	@echo "== staticcheck"
	$(GO) tool staticcheck $(PKGS)
	cd v4-epoll-batch/etcd && $(GO) tool staticcheck ./...

# The fuzz targets' seed corpora run as ordinary tests here.
.PHONY: race
race:
	@echo "== go test -race"
	$(GO) test -race -count=1 $(PKGS)
	@echo "== go test -race, v4 on its portable engine (what TLS, macOS and Windows use)"
	$(GO) test -race -count=1 -tags rpcsteps_portable ./v4-epoll-batch/
	@echo "== go test, GOARCH=386 (no -race there): the shared packages and v4, on 32 bits"
	GOARCH=386 $(GO) test -count=1 ./shared/... ./v4-epoll-batch/...
	@echo "== go test -race, the etcd module (starts its own etcd, embedded)"
	cd v4-epoll-batch/etcd && $(GO) test -race -count=1 ./...

# Every benchmark once, so that none can rot between bench-all runs.
.PHONY: bench-smoke
bench-smoke:
	@echo "== benchmarks, once each"
	$(GO) test -run '^$$' -bench . -benchtime=1x $(PKGS)

# bench-all measures the grid as users get it: benchcmp/cross starts each
# implementation's server in a process of its own (calls/s, p50/p99,
# server and client CPU per call; raw, a length-prefixed echo with no RPC,
# is the transport's limit). BENCHTIME is each run's measured window, after
# CROSS_WARMUP; at -count 6 the whole target took 7 minutes on 2 cores. Then
# benchcmp's in-process benchmarks give allocations per call, for the rows
# the plots and docs use (64 callers, 1,000 clients): ALLOCS_COUNT runs of
# ALLOCS_BENCHTIME calls each, as allocations hardly vary between runs
# (with 1,000 clients that is 10 calls a connection, whose first calls'
# allocations then weigh more than in a long run). One
# raw file in results/ holds both, with `uptime` before and after. The
# plots go to IMG: results/img, so that a run leaves the clone clean;
# IMG=docs/img refreshes the tracked figures.
CROSS_WARMUP     ?= 200ms
ALLOCS_BENCH     ?= ^Benchmark(Echo|Sleep|Conns)$$/impl/size/^(callers=64|clients=1000)$$
ALLOCS_BENCHTIME ?= 10000x
ALLOCS_COUNT     ?= 1
IMG              ?= $(RESULTS)/img

.PHONY: bench-all
bench-all: ## the grid, each server in its own process, then allocations per call; raw output in results/, benchstat tables, plots in IMG (results/img)
	@mkdir -p $(RESULTS)
	@out=$(RESULTS)/bench-$$(date -u +%Y%m%dT%H%M%SZ).txt; start=$$(date +%s); \
	echo "# uptime before: $$(uptime)" > $$out; \
	n=$$($(GO) test -run '^$$' -list '$(BENCH)' ./benchcmp/cross | grep -c '^Bench'); \
	echo "== benchcmp/cross: $$n benchmark function(s) matching '$(BENCH)', each server in its own process, -count $(COUNT), a $(BENCHTIME) window after $(CROSS_WARMUP) of warm-up; raw output in $$out"; \
	echo "   one line per finished run (size x callers x impl; Sleep: a 1 ms method; Conns: 1,000 clients); $(GO) $$($(GO) env GOVERSION), $$(nproc) CPUs"; \
	$(GO) test -run '^$$' -bench '$(BENCH)' -count $(COUNT) -benchtime $(BENCHTIME) -timeout 0 ./benchcmp/cross -cross.warmup $(CROSS_WARMUP) | tee -a $$out; \
	status=$${PIPESTATUS[0]}; [ $$status -eq 0 ] || exit $$status; \
	echo "== benchcmp, client and server in one process, for allocations per call: -count $(ALLOCS_COUNT), -benchtime $(ALLOCS_BENCHTIME)"; \
	$(GO) test -run '^$$' -bench '$(ALLOCS_BENCH)' -benchmem -count $(ALLOCS_COUNT) -benchtime $(ALLOCS_BENCHTIME) -timeout 0 ./benchcmp | tee -a $$out; \
	status=$${PIPESTATUS[0]}; [ $$status -eq 0 ] || exit $$status; \
	echo "# uptime after: $$(uptime)" >> $$out; \
	echo "# bench-all: $$(( $$(date +%s) - start )) s for both runs" | tee -a $$out; \
	cp $$out $(RESULTS)/latest.txt; \
	echo; echo "== go tool benchstat -col /impl -filter '.name:/^Cross/' $$out"; \
	$(GO) tool benchstat -col /impl -filter '.name:/^Cross/' $$out || exit $$?; \
	echo; echo "== allocations per call (in one process): go tool benchstat -col /impl -filter '-.name:/^Cross/ .unit:(B/op OR allocs/op)' $$out"; \
	$(GO) tool benchstat -col /impl -filter '-.name:/^Cross/ .unit:(B/op OR allocs/op)' $$out || exit $$?; \
	echo; echo "== plots of $$out in $(IMG)"; $(GO) run ./benchcmp/cmd/plots -in $$out -out $(IMG)

# cluster-demo: an embedded etcd, three v4 servers (child processes)
# registered in it, a cluster client calling through them; one server is
# killed with SIGKILL, one shut down. The etcd module's own go.mod.
.PHONY: cluster-demo
cluster-demo: ## etcd + 3 servers + a cluster client; one server killed -9, one shut down
	cd v4-epoll-batch/etcd && $(GO) run ./demo

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

.PHONY: cover
cover: ## test coverage per function; HTML in results/cover.html
	@mkdir -p $(RESULTS)
	$(GO) test -count=1 -coverprofile=$(RESULTS)/cover.out $(PKGS)
	$(GO) tool cover -func=$(RESULTS)/cover.out | tail -n 1
	$(GO) tool cover -html=$(RESULTS)/cover.out -o $(RESULTS)/cover.html
	@echo "open $(RESULTS)/cover.html"

# FROM and TO are version folders or their prefixes: v1, v2-connpool, ...
# internal/stepdiff prints the step: the non-test .go files at the top of
# each folder, paired by role (v3's conn.go with v4's portable_client.go),
# the package's name normalised on both sides so that the rename is not a
# difference, in the chapter's reading order. FULL=1: every file (tests,
# READMEs, examples, sub-packages).
.PHONY: diff
diff: ## the step between two versions: make diff FROM=v1 TO=v2 (FULL=1: every file)
	@from=$$(ls -d $(FROM)*/ 2>/dev/null | head -n 1); to=$$(ls -d $(TO)*/ 2>/dev/null | head -n 1); \
	if [ -z "$(FROM)" ] || [ -z "$(TO)" ] || [ -z "$$from" ] || [ -z "$$to" ]; then \
	  echo "usage: make diff FROM=v1 TO=v2 (version folders: $$(ls -d v[0-9]*/ 2>/dev/null | tr '\n' ' '))"; exit 2; fi; \
	$(GO) run ./internal/stepdiff -from $$from -to $$to $(if $(filter-out 0,$(FULL)),-full)

# loadgen: each implementation's server in a child process, so that the
# latencies are not shared with the client's scheduler and GC. The grid is
# 3 caller counts x every implementation x LOADGEN_DURATION.
LOADGEN_DURATION ?= 5s
# IMPL: all, or a list such as v4,v4-portable,v4-tls (the two engines, TLS),
# or raw (no RPC: the transport's limit; echo only).
IMPL             ?= all
SIZE             ?= 64

.PHONY: loadgen
loadgen: ## cross-process load: IMPL (all) x callers 1, 64, 1024 at SIZE (64) B, LOADGEN_DURATION (5s) each
	@mkdir -p $(RESULTS)
	@out=$(RESULTS)/loadgen-$$(date -u +%Y%m%dT%H%M%SZ).txt; \
	echo "== loadgen: -impl $(IMPL) x callers 1, 64, 1024, $(SIZE) B payloads, $(LOADGEN_DURATION) each; output also in $$out"; \
	$(GO) run ./benchcmp/cmd/loadgen -impl $(IMPL) -callers 1,64,1024 -size $(SIZE) -duration $(LOADGEN_DURATION) | tee $$out; \
	exit $${PIPESTATUS[0]}

.PHONY: plots
plots: ## draw results/latest.txt (make bench-all) into IMG (results/img; IMG=docs/img for the tracked figures)
	$(GO) run ./benchcmp/cmd/plots -in $(RESULTS)/latest.txt -out $(IMG)

.PHONY: connscale
connscale: ## goroutines and memory per idle connection, v3 against v4 (up to 9,000 connections)
	@mkdir -p $(RESULTS)
	$(GO) run ./benchcmp/cmd/connscale -impl v3,v4 -conns 100,1000,9000 -out $(RESULTS)/connscale.txt
	$(GO) run ./benchcmp/cmd/plots -in $(RESULTS)/latest.txt -conns $(RESULTS)/connscale.txt -out $(IMG)

# cluster-bench: one v4 cluster client (P2C) over 1, 2 and 4 server
# processes, then 4 with one killed (kill -9) mid-run, plain and
# idempotent calls; exit status 1 if a call was lost without an error (or
# failed where none should). On a machine of few cores it shows
# correctness and overhead, not scaling.
CLUSTER_DURATION ?= 5s

.PHONY: cluster-bench
cluster-bench: ## cluster client over 1, 2, 4 server processes, then one killed mid-run; output in results/
	@mkdir -p $(RESULTS)
	@out=$(RESULTS)/cluster-bench-$$(date -u +%Y%m%dT%H%M%SZ).txt; \
	echo "== cluster-bench: -duration $(CLUSTER_DURATION) per run; output also in $$out"; \
	$(GO) run ./benchcmp/cmd/clusterbench -duration $(CLUSTER_DURATION) 2>&1 | tee $$out; \
	exit $${PIPESTATUS[0]}

# soak: v3 and v4 (Linux) through a proxy that splits, delays and resets
# their connections, 64 callers each, under -race. A wrong reply, a call
# past its deadline, a leak fail it. The table is appended to
# $(RESULTS)/soak.txt (SOAK_REPORT; the test runs in its package's folder,
# hence abspath) and printed. -soak.seed=... in the go test line replays
# a run's faults.
SOAK_DURATION ?= 60s

.PHONY: soak
soak: ## fault-injection soak: v3 and v4 through a faulty proxy, SOAK_DURATION (60s) each; table in results/soak.txt
	@mkdir -p $(RESULTS)
	@echo "== soak: v3 and v4 through a proxy that splits, delays and resets, $(SOAK_DURATION) each, -race"
	@report=$(abspath $(RESULTS))/soak.txt; before=$$(cat $$report 2>/dev/null | wc -l); \
	cmd="$(GO) test -race -count=1 -run TestSoak -timeout 10m ./internal/soak -soak.duration=$(SOAK_DURATION)"; \
	echo "SOAK_REPORT=$$report $$cmd"; SOAK_REPORT=$$report $$cmd; status=$$?; \
	echo; echo "== this run's lines in $(RESULTS)/soak.txt"; tail -n +$$((before + 1)) $$report 2>/dev/null; \
	exit $$status
