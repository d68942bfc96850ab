// Command plots draws the benchmark grid of `make bench-all` for a reader:
//
//	go run ./benchcmp/cmd/plots -in results/latest.txt -out results/img
//
// It reads raw `go test -bench` output, takes the median of each metric
// over the -count repetitions, and writes one file per figure:
//
//	throughput-{echo-64,echo-4096,sleep}   calls/s against callers, a line per implementation
//	latency-p99-{echo-64,echo-4096,sleep}  p99 latency against callers, a line per implementation
//	cpu-{echo-64,echo-4096,sleep}          CPU per call against callers: server + client, and server
//	allocs                                 allocations per call, a bar per workload
//
// make bench-all's file holds the cross-process grid (BenchmarkCross*,
// benchcmp/cross: calls/s, p99-ms, srv-us/call, cli-us/call), which the
// line figures are drawn from, and benchcmp's in-process benchmarks, which
// the allocation bars are drawn from. A file of in-process results alone
// (an older run) still draws: its calls/s and p99-ns then make the line
// figures, and the CPU figures are skipped. A figure whose data the file
// lacks (a run with BENCH=Sleep, say) is skipped and the rest are drawn.
// make bench-all draws into results/img; IMG=docs/img refreshes the
// tracked figures.
package main

import (
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Every figure's size, and the resolution of PNGs.
const (
	width  = 16 * vg.Centimeter
	height = 10 * vg.Centimeter
	dpi    = 144
)

type options struct {
	// inputs maps an input name (figure.input) to its results file. A
	// second kind of run, e.g. goroutines and memory against connections,
	// gets a flag and an entry here.
	inputs map[string]string
	out    string
	format string
}

func parseFlags(args []string, w io.Writer) (*options, error) {
	fs := flag.NewFlagSet("plots", flag.ContinueOnError)
	fs.SetOutput(w)
	in := fs.String("in", "results/latest.txt", "raw `go test -bench` output of benchcmp (make bench-all)")
	out := fs.String("out", "results/img", "directory to write the figures into (docs/img: the tracked ones)")
	format := fs.String("format", "png", "png or svg")
	conns := fs.String("conns", "", "output of connscale -out (make connscale), for the idle-connection figures")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q (flags only)", fs.Args())
	}
	if *format != "png" && *format != "svg" {
		return nil, fmt.Errorf("-format %q: want png or svg", *format)
	}
	if *in == "" {
		return nil, errors.New("-in: want a results file")
	}
	inputs := map[string]string{"bench": *in}
	if *conns != "" {
		inputs["conns"] = *conns
	}
	return &options{inputs: inputs, out: *out, format: *format}, nil
}

func main() {
	opts, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "plots:", err)
		os.Exit(2)
	}
	if err := run(opts, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "plots:", err)
		os.Exit(1)
	}
}

// run draws every figure whose input was given and holds its data.
func run(opts *options, log io.Writer) error {
	sets := map[string]*Set{}
	for name, path := range opts.inputs {
		if path == "" {
			continue
		}
		s, err := load(path)
		if err != nil {
			return err
		}
		sets[name] = s
	}
	if err := os.MkdirAll(opts.out, 0o755); err != nil {
		return err
	}
	written := 0
	for _, f := range figures() {
		s := sets[f.input]
		if s == nil {
			continue
		}
		c, err := f.build(s)
		if err != nil {
			return fmt.Errorf("%s: %w", f.file, err)
		}
		if c == nil {
			fmt.Fprintf(log, "skipped %s: no data for it in %s\n", f.file, s.Source)
			continue
		}
		path := filepath.Join(opts.out, f.file+"."+opts.format)
		if err := c.save(path, opts.format); err != nil {
			return err
		}
		fmt.Fprintln(log, "wrote", path)
		written++
	}
	if written == 0 {
		return errors.New("no figure had data: is the input benchcmp's `go test -bench` output?")
	}
	return nil
}

func load(path string) (*Set, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w (make bench-all writes results/latest.txt; or pass -in)", err)
		}
		return nil, err
	}
	defer f.Close()
	lines, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("%s: no benchmark results in it", path)
	}
	return Merge(path, lines), nil
}

// save draws the chart, its legend to the right of the plot, into a file.
func (c *chart) save(path, format string) error {
	var cv vg.CanvasWriterTo
	switch format {
	case "png":
		cv = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(dpi))}
	case "svg":
		cv = vgsvg.New(width, height)
	default:
		return fmt.Errorf("unknown format %q", format)
	}
	dc := draw.New(cv)
	foot := draw.TextStyle{
		Color:   color.Gray{Y: 90},
		Font:    font.From(plot.DefaultFont, 8),
		Handler: plot.DefaultTextHandler,
	}
	footH := foot.Rectangle(c.caption).Size().Y + 0.2*vg.Centimeter
	dc.FillText(foot, vg.Point{X: dc.Min.X + 0.2*vg.Centimeter, Y: dc.Min.Y + 0.1*vg.Centimeter}, c.caption)

	c.legend.Top = true
	c.legend.Left = true
	c.legend.YOffs = -vg.Centimeter
	c.legend.TextStyle.Font.Size = vg.Points(11)
	c.legend.Padding = vg.Points(3)
	lw := c.legend.Rectangle(dc).Size().X + 0.4*vg.Centimeter
	pc := draw.Crop(dc, 0, -lw, footH, -0.2*vg.Centimeter)
	if c.fit != nil {
		for range 2 { // the data area depends a little on what fit sizes
			c.fit(c.p.DataCanvas(pc))
		}
	}
	c.p.Draw(pc)
	c.legend.Draw(draw.Crop(dc, dc.Size().X-lw+0.2*vg.Centimeter, 0, footH, 0))

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := cv.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
