package main

import (
	"image/color"
	"os"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// svgFile is where the picture of the loads goes (-svg).
var svgFile string

// curve is one server's results across concurrencies.
type curve struct {
	name   string
	points []curvePoint
}

type curvePoint struct {
	concurrency int
	throughput  float64 // per second
	p50, p99    float64 // ms
	errors      int
	cpu         time.Duration // server CPU per operation
}

func (c *curve) add(concurrency int, throughput, p50, p99 float64, errors int, cpu time.Duration) {
	c.points = append(c.points, curvePoint{concurrency, throughput, p50, p99, errors, cpu})
}

// at returns the point measured at a concurrency.
func (c *curve) at(concurrency int) curvePoint {
	for _, p := range c.points {
		if p.concurrency == concurrency {
			return p
		}
	}
	return curvePoint{}
}

// plotCurves draws throughput and p99 latency against concurrency, side by
// side, one line per server, into an SVG file.
func plotCurves(curves []*curve, file string) error {
	colors := []color.Color{
		color.RGBA{R: 0x1b, G: 0x9e, B: 0x77, A: 0xff},
		color.RGBA{R: 0x75, G: 0x70, B: 0xb3, A: 0xff},
		color.RGBA{R: 0xd9, G: 0x5f, B: 0x02, A: 0xff},
		color.RGBA{R: 0xe7, G: 0x29, B: 0x8a, A: 0xff},
	}
	panel := func(title, ylabel string, y func(curvePoint) float64, logY bool) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "concurrency"
		p.Y.Label.Text = ylabel
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, concurrencyTicks{}
		if logY {
			p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		}
		p.Legend.Top, p.Legend.Left = !logY, true
		p.Add(plotter.NewGrid())
		for i, c := range curves {
			xys := make(plotter.XYs, 0, len(c.points))
			for _, pt := range c.points {
				if v := y(pt); v > 0 {
					xys = append(xys, plotter.XY{X: float64(pt.concurrency), Y: v})
				}
			}
			line, points, err := plotter.NewLinePoints(xys)
			if err != nil {
				return nil, err
			}
			line.Color, points.Color = colors[i%len(colors)], colors[i%len(colors)]
			line.Width = vg.Points(1.5)
			p.Add(line, points)
			p.Legend.Add(c.name, line, points)
		}
		return p, nil
	}
	tput, err := panel("Throughput", "operations per second", func(p curvePoint) float64 { return p.throughput }, false)
	if err != nil {
		return err
	}
	lat, err := panel("Tail latency", "p99 (ms, log scale)", func(p curvePoint) float64 { return p.p99 }, true)
	if err != nil {
		return err
	}
	const w, h = 11 * vg.Inch, 4.5 * vg.Inch
	canvas := vgsvg.New(w, h)
	dc := draw.New(canvas)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 6, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{tput, lat}}
	canvases := plot.Align(plots, tiles, dc)
	tput.Draw(canvases[0][0])
	lat.Draw(canvases[0][1])
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := canvas.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// concurrencyTicks marks the concurrencies measured on a log axis.
type concurrencyTicks struct{}

func (concurrencyTicks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for _, c := range []float64{1, 2, 8, 32, 128} {
		if c >= min && c <= max {
			ts = append(ts, plot.Tick{Value: c, Label: strconv.Itoa(int(c))})
		}
	}
	return ts
}
