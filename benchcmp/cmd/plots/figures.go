package main

import (
	"cmp"
	"fmt"
	"image/color"
	"math"
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
// that fix its payload.
type workload struct {
	file, title, short string
	fn                 string
	where              map[string]string
}

var workloads = []workload{
	{"echo-64", "Echo, 64 B payload", "echo 64 B", "Echo", map[string]string{"size": "64"}},
	{"echo-4096", "Echo, 4 KiB payload", "echo 4 KiB", "Echo", map[string]string{"size": "4096"}},
	{"sleep", "Sleep (1 ms in the method), 64 B payload", "sleep 1 ms", "Sleep", map[string]string{"size": "64"}},
}

// allocsCallers is the caller count of the allocation bars: allocations
// per call hardly depend on it, and every workload has it.
const allocsCallers = "64"

func figures() []figure {
	var fs []figure
	for _, w := range workloads {
		fs = append(fs, figure{file: "throughput-" + w.file, input: "bench", build: lineSpec{
			title:  w.title + ": throughput",
			fn:     w.fn,
			where:  w.where,
			x:      "callers",
			xLabel: "callers sharing one client (log scale)",
			metric: "calls/s",
			scale:  1,
			yLabel: "calls/s (log scale)",
			yTick:  fmtSI,
		}.build})
	}
	for _, w := range workloads {
		fs = append(fs, figure{file: "latency-p99-" + w.file, input: "bench", build: lineSpec{
			title:  w.title + ": p99 latency of one call",
			fn:     w.fn,
			where:  w.where,
			x:      "callers",
			xLabel: "callers sharing one client (log scale)",
			metric: "p99-ns",
			scale:  1e-6,
			yLabel: "p99 latency, ms (log scale)",
			yTick:  func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) },
		}.build})
	}
	fs = append(fs, figure{file: "conns-goroutines", input: "conns", build: lineSpec{
		title:   "Idle connections: server goroutines per connection",
		fn:      "ConnScale",
		x:       "conns",
		xLabel:  "idle connections (log scale)",
		metric:  "goroutines/conn",
		scale:   1,
		yLabel:  "goroutines per connection",
		linearY: true,
	}.build})
	fs = append(fs, figure{file: "conns-memory", input: "conns", build: lineSpec{
		title:   "Idle connections: server memory per connection",
		fn:      "ConnScale",
		x:       "conns",
		xLabel:  "idle connections (log scale)",
		metric:  "bytes/conn",
		scale:   1.0 / 1024,
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
// the tutorial's, then any others in the order they appear.
func implOrder(ps []Point) []string {
	var names []string
	for _, im := range benchcmp.Impls() {
		names = append(names, im.Name)
	}
	for _, v := range Values(ps, "impl") {
		if !slices.Contains(names, v) {
			names = append(names, v)
		}
	}
	return names
}

// caption is the figure's footnote: what the numbers are and where they
// come from.
func caption(s *Set, ps []Point) string {
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
	return fmt.Sprintf("%s, GOMAXPROCS %s; %s", what, strings.Join(ps2, ","), s.Source)
}

// lineSpec is a figure of one metric against a numeric key, one line per
// implementation, on log-log axes.
type lineSpec struct {
	title  string
	fn     string
	where  map[string]string
	x      string // the key on the x axis
	xLabel string
	metric string
	scale  float64 // the metric times scale is plotted
	yLabel string
	yTick  func(float64) string
	// linearY plots the metric as it is, from 0, instead of on a log
	// scale: for figures where 0 is a value (v4's goroutines per idle
	// connection).
	linearY bool
}

func (ls lineSpec) build(s *Set) (*chart, error) {
	ps := s.Select(ls.fn, ls.where)
	p := plot.New()
	legend := plot.NewLegend()
	var xs []float64
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for i, impl := range implOrder(ps) {
		var pts plotter.XYs
		for _, pt := range ps {
			if pt.Keys["impl"] != impl {
				continue
			}
			x, err := strconv.ParseFloat(pt.Keys[ls.x], 64)
			y, ok := pt.Metrics[ls.metric]
			if err != nil || !ok || x <= 0 || y < 0 || (y == 0 && !ls.linearY) {
				continue
			}
			y *= ls.scale
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
		if len(pts) == 0 {
			continue
		}
		slices.SortFunc(pts, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
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
	return &chart{p: p, legend: legend, caption: caption(s, ps)}, nil
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
		ps := s.Select(w.fn, where)
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
