package main

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/rpcsteps/rpcsteps/benchcmp"
)

// A figure is one plot file. input names the results file it is drawn
// from (see inputs in main.go): a figure over another kind of run, say
// server goroutines and memory against connections from a file of its
// own, is one more input and one more entry in figures.
type figure struct {
	file  string // the output's name, without extension
	input string
	// build draws the figure from the input's results; it returns nil
	// if they hold none of the figure's data.
	build func(*Set) (*chart, error)
}

// chart is a plot and its legend, which is drawn beside the plot rather
// than over its lines.
type chart struct {
	p       *plot.Plot
	legend  plot.Legend
	caption string // a footnote: what the numbers are, where they come from
	// fit, if set, sizes what is measured in data units (bars) once the
	// size of the data area is known.
	fit func(data draw.Canvas)
}

// workload is one column of the grid: a benchmark function and the keys
// that fix its payload. fns are the function's names, the cross-process
// one (make bench-all, benchcmp/cross) first: a figure is drawn from the
// first that has data, so that an older file of in-process results still
// draws.
type workload struct {
	file, title, short string
	fns                []string
	where              map[string]string
}

var workloads = []workload{
	{"echo-64", "Echo, 64 B payload", "echo 64 B", []string{"CrossEcho", "Echo"}, map[string]string{"size": "64"}},
	{"echo-4096", "Echo, 4 KiB payload", "echo 4 KiB", []string{"CrossEcho", "Echo"}, map[string]string{"size": "4096"}},
	{"sleep", "Sleep (1 ms in the method), 64 B payload", "sleep 1 ms", []string{"CrossSleep", "Sleep"}, map[string]string{"size": "64"}},
}

// inProcess is the in-process function of a workload, where allocations
// per call are measured (the cross-process lines have none).
func (w workload) inProcess() string { return w.fns[len(w.fns)-1] }

// allocsCallers is the caller count of the allocation bars: allocations
// per call hardly depend on it, and every workload has it.
const allocsCallers = "64"

// metric is a unit to plot and the factor that brings it to the axis's
// unit. A figure takes the first of its metrics that a point has: p99 is
// p99-ms in the cross-process lines and p99-ns in the in-process ones.
type metric struct {
	unit  string
	scale float64
}

// value returns the first of ms that p has, scaled.
func value(p Point, ms []metric) (float64, bool) {
	for _, m := range ms {
		if v, ok := p.Metrics[m.unit]; ok {
			return v * m.scale, true
		}
	}
	return 0, false
}

// sum returns the sum of units in p, if p has them all.
func sum(p Point, units ...string) (float64, bool) {
	t := 0.0
	for _, u := range units {
		v, ok := p.Metrics[u]
		if !ok {
			return 0, false
		}
		t += v
	}
	return t, true
}

func figures() []figure {
	var fs []figure
	for _, w := range workloads {
		fs = append(fs, figure{file: "throughput-" + w.file, input: "bench", build: lineSpec{
			title:  w.title + ": throughput",
			fns:    w.fns,
			where:  w.where,
			x:      "callers",
			xLabel: "callers sharing one client (log scale)",
			value:  func(p Point) (float64, bool) { return value(p, []metric{{"calls/s", 1}}) },
			yLabel: "calls/s (log scale)",
			yTick:  fmtSI,
		}.build})
	}
	for _, w := range workloads {
		fs = append(fs, figure{file: "latency-p99-" + w.file, input: "bench", build: lineSpec{
			title:  w.title + ": p99 latency of one call",
			fns:    w.fns,
			where:  w.where,
			x:      "callers",
			xLabel: "callers sharing one client (log scale)",
			value:  func(p Point) (float64, bool) { return value(p, []metric{{"p99-ms", 1}, {"p99-ns", 1e-6}}) },
			yLabel: "p99 latency, ms (log scale)",
			yTick:  fmtG,
		}.build})
	}
	for _, w := range workloads {
		fs = append(fs, figure{file: "cpu-" + w.file, input: "bench", build: lineSpec{
			title:  w.title + ": CPU per call",
			fns:    w.fns[:1], // only the cross-process lines measure CPU
			where:  w.where,
			x:      "callers",
			xLabel: "callers sharing one client (log scale)",
			value:  func(p Point) (float64, bool) { return sum(p, "srv-us/call", "cli-us/call") },
			dashed: func(p Point) (float64, bool) { return value(p, []metric{{"srv-us/call", 1}}) },
			yLabel: "CPU µs per call (log scale)",
			yTick:  fmtG,
			note:   "solid: server + client; dashed: server",
		}.build})
	}
	fs = append(fs, figure{file: "conns-goroutines", input: "conns", build: lineSpec{
		title:   "Idle connections: server goroutines per connection",
		fns:     []string{"ConnScale"},
		x:       "conns",
		xLabel:  "idle connections (log scale)",
		value:   func(p Point) (float64, bool) { return value(p, []metric{{"goroutines/conn", 1}}) },
		yLabel:  "goroutines per connection",
		linearY: true,
	}.build})
	fs = append(fs, figure{file: "conns-memory", input: "conns", build: lineSpec{
		title:   "Idle connections: server memory per connection",
		fns:     []string{"ConnScale"},
		x:       "conns",
		xLabel:  "idle connections (log scale)",
		value:   func(p Point) (float64, bool) { return value(p, []metric{{"bytes/conn", 1.0 / 1024}}) },
		yLabel:  "KiB per connection (heap + stacks)",
		linearY: true,
	}.build})
	fs = append(fs, figure{file: "allocs", input: "bench", build: barSpec{
		title:  "Allocations per call, " + allocsCallers + " callers",
		metric: "allocs/op",
		yLabel: "allocations per call",
	}.build})
	return fs
}

// implOrder is the order, and so the colour, of every implementation:
// the tutorial's, then raw (the transport's limit), then any others in the
// order they appear.
func implOrder(ps []Point) []string {
	var names []string
	for _, im := range append(benchcmp.Impls(), benchcmp.Raw()) {
		names = append(names, im.Name)
	}
	for _, v := range Values(ps, "impl") {
		if !slices.Contains(names, v) {
			names = append(names, v)
		}
	}
	return names
}

// hasCross reports whether s holds cross-process lines (benchcmp/cross).
func (s *Set) hasCross() bool {
	for _, p := range s.Points {
		if strings.HasPrefix(p.Func, "Cross") {
			return true
		}
	}
	return false
}

// caption is the figure's footnote: what the numbers are and where they
// come from.
func caption(s *Set, ps []Point) string {
	where := "client and server in one process"
	for _, p := range ps {
		if strings.HasPrefix(p.Func, "Cross") {
			where = "each server in its own process"
			break
		}
	}
	runs, procs := 0, []int{}
	for _, p := range ps {
		runs = max(runs, p.Runs)
		if !slices.Contains(procs, p.Procs) {
			procs = append(procs, p.Procs)
		}
	}
	slices.Sort(procs)
	var ps2 []string
	for _, p := range procs {
		ps2 = append(ps2, strconv.Itoa(p))
	}
	what := fmt.Sprintf("median of %d runs", runs)
	if runs == 1 {
		what = "one run"
	}
	return fmt.Sprintf("%s, GOMAXPROCS %s, %s; %s", what, strings.Join(ps2, ","), where, filepath.Base(s.Source))
}

// lineSpec is a figure of one metric against a numeric key, one line per
// implementation, on log-log axes.
type lineSpec struct {
	title string
	// fns are benchmark functions: the first with points is drawn.
	fns    []string
	where  map[string]string
	x      string // the key on the x axis
	xLabel string
	// value is what is plotted of a point, in the y axis's unit; dashed,
	// if set, is a second line per implementation, dashed, in the same
	// colour (note says what the two are).
	value, dashed func(Point) (float64, bool)
	yLabel        string
	yTick         func(float64) string
	note          string
	// linearY plots the metric as it is, from 0, instead of on a log
	// scale: for figures where 0 is a value (v4's goroutines per idle
	// connection).
	linearY bool
}

func (ls lineSpec) build(s *Set) (*chart, error) {
	fns := ls.fns
	if s.hasCross() {
		// make bench-all's file: its in-process lines are there for
		// allocations, and must not stand in for a cross-process row.
		fns = fns[:1]
	}
	var ps []Point
	for _, fn := range fns {
		if ps = s.Select(fn, ls.where); len(ps) > 0 {
			break
		}
	}
	p := plot.New()
	legend := plot.NewLegend()
	var xs []float64
	ymin, ymax := math.Inf(1), math.Inf(-1)
	// points returns the line of impl for one value function.
	points := func(impl string, val func(Point) (float64, bool)) plotter.XYs {
		var pts plotter.XYs
		for _, pt := range ps {
			if pt.Keys["impl"] != impl {
				continue
			}
			x, err := strconv.ParseFloat(pt.Keys[ls.x], 64)
			y, ok := val(pt)
			if err != nil || !ok || x <= 0 || y < 0 || (y == 0 && !ls.linearY) {
				continue
			}
			yv := y
			if !ls.linearY {
				yv = math.Log10(y)
			}
			pts = append(pts, plotter.XY{X: math.Log10(x), Y: yv})
			if !slices.Contains(xs, x) {
				xs = append(xs, x)
			}
			ymin, ymax = min(ymin, y), max(ymax, y)
		}
		slices.SortFunc(pts, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
		return pts
	}
	for i, impl := range implOrder(ps) {
		pts := points(impl, ls.value)
		if len(pts) == 0 {
			continue
		}
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, err
		}
		l.Color = plotutil.DarkColors[i%len(plotutil.DarkColors)]
		l.Width = vg.Points(1.5)
		sc.Color = l.Color
		sc.Shape = plotutil.Shape(i)
		sc.Radius = vg.Points(3.5)
		p.Add(l, sc)
		legend.Add(impl, l, sc)
		if ls.dashed == nil {
			continue
		}
		if dpts := points(impl, ls.dashed); len(dpts) > 0 {
			dl, err := plotter.NewLine(dpts)
			if err != nil {
				return nil, err
			}
			dl.Color = l.Color
			dl.Width = vg.Points(1)
			dl.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(dl)
		}
	}
	if len(xs) == 0 {
		return nil, nil
	}
	p.Title.Text = ls.title
	p.X.Label.Text = ls.xLabel
	p.Y.Label.Text = ls.yLabel
	// Both axes are logarithmic: the points are plotted as log10 of
	// their values on linear axes whose ticks are labelled with the
	// values. (plot.LogScale would do the same, but gonum then reserves
	// room for the axis labels as if they sat at the linear midpoint.)
	slices.Sort(xs)
	var xt plot.ConstantTicks
	for _, x := range xs {
		xt = append(xt, plot.Tick{Value: math.Log10(x), Label: strconv.FormatFloat(x, 'g', -1, 64)})
	}
	p.X.Tick.Marker = xt
	p.X.Min, p.X.Max = math.Log10(xs[0]/1.5), math.Log10(xs[len(xs)-1]*1.5)
	if ls.linearY {
		p.Y.Min, p.Y.Max = 0, niceAbove(max(ymax, 1))
	} else {
		p.Y.Min, p.Y.Max = math.Log10(niceBelow(ymin)), math.Log10(niceAbove(ymax))
		p.Y.Tick.Marker = logTicks{label: ls.yTick}
	}
	p.Add(plotter.NewGrid())
	c := &chart{p: p, legend: legend, caption: caption(s, ps)}
	if ls.note != "" {
		c.caption = ls.note + "; " + c.caption
	}
	return c, nil
}

// barSpec is a figure of one metric per implementation, a bar for each
// workload, at allocsCallers callers.
type barSpec struct {
	title  string
	metric string
	yLabel string
}

// barColors tell the workloads apart (the x axis names the
// implementations).
var barColors = []color.Color{
	color.RGBA{R: 90, G: 155, B: 212, A: 255},
	color.RGBA{R: 24, G: 70, B: 140, A: 255},
	color.RGBA{R: 250, G: 167, B: 91, A: 255},
}

func (bs barSpec) build(s *Set) (*chart, error) {
	var all []Point
	type bars struct {
		w    workload
		vals map[string]float64
	}
	var ws []bars
	for _, w := range workloads {
		where := map[string]string{"callers": allocsCallers}
		for k, v := range w.where {
			where[k] = v
		}
		ps := s.Select(w.inProcess(), where)
		b := bars{w: w, vals: map[string]float64{}}
		for _, p := range ps {
			if v, ok := p.Metrics[bs.metric]; ok {
				b.vals[p.Keys["impl"]] = v
				all = append(all, p)
			}
		}
		if len(b.vals) > 0 {
			ws = append(ws, b)
		}
	}
	if len(ws) == 0 {
		return nil, nil
	}
	var impls []string
	for _, im := range implOrder(all) {
		for _, b := range ws {
			if _, ok := b.vals[im]; ok {
				impls = append(impls, im)
				break
			}
		}
	}

	p := plot.New()
	legend := plot.NewLegend()
	p.Title.Text = bs.title
	p.Y.Label.Text = bs.yLabel
	p.X.Label.Text = "implementation"
	p.NominalX(impls...)
	// Bars are placed in data units: group i's bars sit around x = i,
	// step apart; fit sets their width once the plot's size is known.
	const groupWidth = 0.75
	step := groupWidth / float64(len(ws))
	var bcs []*plotter.BarChart
	for j, b := range ws {
		vals := make(plotter.Values, len(impls))
		var lx plotter.XYLabels
		for i, im := range impls {
			vals[i] = b.vals[im]
			if v, ok := b.vals[im]; ok {
				x := float64(i) + (float64(j)-float64(len(ws)-1)/2)*step
				lx.XYs = append(lx.XYs, plotter.XY{X: x, Y: v})
				lx.Labels = append(lx.Labels, strconv.FormatFloat(v, 'g', 4, 64))
			}
		}
		bc, err := plotter.NewBarChart(vals, vg.Points(1))
		if err != nil {
			return nil, err
		}
		bc.XMin = (float64(j) - float64(len(ws)-1)/2) * step
		bc.Color = barColors[j%len(barColors)]
		bc.LineStyle.Width = 0
		labels, err := plotter.NewLabels(lx)
		if err != nil {
			return nil, err
		}
		for i := range labels.TextStyle {
			labels.TextStyle[i].XAlign = draw.XCenter
			labels.TextStyle[i].Font.Size = vg.Points(8)
		}
		labels.Offset = vg.Point{Y: vg.Points(2)}
		p.Add(bc, labels)
		legend.Add(b.w.short, bc)
		bcs = append(bcs, bc)
	}
	p.X.Min, p.X.Max = -0.5, float64(len(impls))-0.5
	p.Y.Min = 0
	p.Y.Max *= 1.1 // room for the labels
	p.Add(&plotter.Grid{Horizontal: plotter.NewGrid().Horizontal})
	fit := func(data draw.Canvas) {
		perUnit := data.Size().X / vg.Length(p.X.Max-p.X.Min)
		for _, bc := range bcs {
			bc.Width = perUnit * vg.Length(step) * 0.95
		}
	}
	return &chart{p: p, legend: legend, caption: caption(s, all), fit: fit}, nil
}

// logTicks marks an axis of log10 values: it labels 1, 2 and 5 times
// each power of ten (only the powers when the axis spans more than three),
// with minor ticks between.
type logTicks struct{ label func(float64) string }

func (t logTicks) Ticks(loExp, hiExp float64) []plot.Tick {
	lo, hi := math.Pow(10, loExp), math.Pow(10, hiExp)
	wide := hiExp-loExp > 3
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		pow := math.Pow(10, e)
		for m := 1; m < 10; m++ {
			v := float64(m) * pow
			if v < lo*(1-1e-9) || v > hi*(1+1e-9) {
				continue
			}
			tk := plot.Tick{Value: math.Log10(v)}
			if m == 1 || (!wide && (m == 2 || m == 5)) {
				tk.Label = t.label(v)
			}
			ticks = append(ticks, tk)
		}
	}
	return ticks
}

// niceBelow and niceAbove round to 1, 2 or 5 times a power of ten, so that
// a log axis starts and ends on a labelled tick.
func niceBelow(v float64) float64 {
	pow := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{5, 2, 1} {
		if m*pow <= v*(1+1e-9) {
			return m * pow
		}
	}
	return pow
}

func niceAbove(v float64) float64 {
	pow := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*pow >= v*(1-1e-9) {
			return m * pow
		}
	}
	return 10 * pow
}

// fmtG prints v as it is: 0.25, 2, 150.
func fmtG(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// fmtSI prints 2000 as 2k and 1000000 as 1M.
func fmtSI(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', -1, 64) + "M"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
