package main

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Line is one result line of `go test -bench` output:
//
//	BenchmarkEcho/impl=v3/size=64/callers=64-2   100375   10979 ns/op   91627 calls/s   856 B/op
type Line struct {
	// Name is the full name without the -N suffix:
	// "BenchmarkEcho/impl=v3/size=64/callers=64".
	Name string
	// Func is the benchmark function without "Benchmark": "Echo".
	Func string
	// Keys holds the key=value segments of the name: impl=v3, size=64...
	// A segment without "=" is kept under its position: "#1", "#2"...
	Keys map[string]string
	// Procs is GOMAXPROCS, from the -N suffix (1 if there is none).
	Procs int
	// Iters is b.N.
	Iters int64
	// Metrics maps each unit (ns/op, calls/s, B/op...) to its value.
	Metrics map[string]float64
}

// Parse reads `go test -bench` output and returns its result lines in
// order. Other lines (goos:, PASS, ok, logs) are skipped; so is a line
// that starts with "Benchmark" but has no iteration count, which is how
// a benchmark that logs shows its name. A result line that is malformed
// after its count is an error.
func Parse(r io.Reader) ([]Line, error) {
	var lines []Line
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		l, ok, err := parseLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if ok {
			lines = append(lines, l)
		}
	}
	return lines, sc.Err()
}

func parseLine(s string) (Line, bool, error) {
	f := strings.Fields(s)
	if len(f) < 2 || !strings.HasPrefix(f[0], "Benchmark") {
		return Line{}, false, nil
	}
	iters, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return Line{}, false, nil // not a result line
	}
	l := Line{Iters: iters, Procs: 1, Keys: map[string]string{}, Metrics: map[string]float64{}}
	l.Name = f[0]
	if i := strings.LastIndexByte(l.Name, '-'); i > 0 {
		if p, err := strconv.Atoi(l.Name[i+1:]); err == nil && p > 0 {
			l.Name, l.Procs = l.Name[:i], p
		}
	}
	segs := strings.Split(l.Name, "/")
	l.Func = strings.TrimPrefix(segs[0], "Benchmark")
	if l.Func == "" {
		return Line{}, false, fmt.Errorf("%q: no benchmark function name", f[0])
	}
	for i, seg := range segs[1:] {
		if k, v, ok := strings.Cut(seg, "="); ok {
			l.Keys[k] = v
		} else {
			l.Keys["#"+strconv.Itoa(i+1)] = seg
		}
	}
	pairs := f[2:]
	if len(pairs)%2 != 0 {
		return Line{}, false, fmt.Errorf("%s: metrics come in value-unit pairs, found %d fields", f[0], len(pairs))
	}
	for i := 0; i < len(pairs); i += 2 {
		v, err := strconv.ParseFloat(pairs[i], 64)
		if err != nil {
			return Line{}, false, fmt.Errorf("%s: metric %q: %w", f[0], pairs[i+1], err)
		}
		l.Metrics[pairs[i+1]] = v
	}
	return l, true, nil
}

// Point is one benchmark (a name and a GOMAXPROCS) with the median of each
// metric over its repetitions (-count).
type Point struct {
	Func    string
	Keys    map[string]string
	Procs   int
	Runs    int
	Metrics map[string]float64
}

// Set is the results of one file, repetitions merged.
type Set struct {
	// Source is where the results came from, for the plots' captions.
	Source string
	Points []Point
}

// Merge groups lines by name and GOMAXPROCS, in the order the first of
// each appears, and takes the median of every metric.
func Merge(source string, lines []Line) *Set {
	type group struct {
		first Line
		vals  map[string][]float64
		runs  int
	}
	var order []string
	groups := map[string]*group{}
	for _, l := range lines {
		id := l.Name + "-" + strconv.Itoa(l.Procs)
		g := groups[id]
		if g == nil {
			g = &group{first: l, vals: map[string][]float64{}}
			groups[id] = g
			order = append(order, id)
		}
		g.runs++
		for unit, v := range l.Metrics {
			g.vals[unit] = append(g.vals[unit], v)
		}
	}
	s := &Set{Source: source}
	for _, id := range order {
		g := groups[id]
		p := Point{Func: g.first.Func, Keys: g.first.Keys, Procs: g.first.Procs, Runs: g.runs, Metrics: map[string]float64{}}
		for unit, vs := range g.vals {
			p.Metrics[unit] = median(vs)
		}
		s.Points = append(s.Points, p)
	}
	return s
}

// median returns the middle value of vs (the mean of the two middle ones
// for an even count); it sorts vs.
func median(vs []float64) float64 {
	slices.Sort(vs)
	n := len(vs)
	if n%2 == 1 {
		return vs[n/2]
	}
	return (vs[n/2-1] + vs[n/2]) / 2
}

// Select returns the points of benchmark function fn whose keys have the
// values in where.
func (s *Set) Select(fn string, where map[string]string) []Point {
	var ps []Point
next:
	for _, p := range s.Points {
		if p.Func != fn {
			continue
		}
		for k, v := range where {
			if p.Keys[k] != v {
				continue next
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// Values returns the values key takes in ps, in order of appearance.
func Values(ps []Point, key string) []string {
	var vs []string
	for _, p := range ps {
		if v, ok := p.Keys[key]; ok && !slices.Contains(vs, v) {
			vs = append(vs, v)
		}
	}
	return vs
}
