package bench

import (
	"fmt"
	"html"
	"strings"
)

var colours = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"}

// Chart draws the runs' throughput (successful requests per second) and p99
// latency over time as an SVG image, one line per run.
func Chart(title string, runs []*Report, names []string) []byte {
	const w, ph, left, top, gap = 760, 220, 70, 40, 60
	var b strings.Builder
	h := top + 2*ph + gap + 50
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="22" font-size="15">%s</text>`+"\n", left, html.EscapeString(title))
	panel := func(y0 int, label string, val func(Second) float64) {
		maxT, maxV := 1.0, 0.0
		for _, r := range runs {
			for _, s := range r.Series {
				maxT = max(maxT, float64(s.T+1))
				maxV = max(maxV, val(s))
			}
		}
		if maxV == 0 {
			maxV = 1
		}
		maxV *= 1.1
		pw := w - left - 20
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", left, y0, pw, ph)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left, y0-6, html.EscapeString(label))
		for i := 0; i <= 4; i++ {
			v := maxV * float64(i) / 4
			y := y0 + ph - int(float64(ph)*float64(i)/4)
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%.4g</text><line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#eee"/>`+"\n", left-6, y+4, v, left, left+pw, y, y)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">seconds</text>`+"\n", left+pw, y0+ph+16)
		for i, r := range runs {
			var pts []string
			for _, s := range r.Series {
				x := left + int(float64(pw)*(float64(s.T)+0.5)/maxT)
				y := y0 + ph - int(float64(ph)*val(s)/maxV)
				pts = append(pts, fmt.Sprintf("%d,%d", x, y))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke-width="2" stroke="%s" points="%s"/>`+"\n", colours[i%len(colours)], strings.Join(pts, " "))
		}
	}
	panel(top+10, "successful requests per second", func(s Second) float64 { return float64(s.OK) })
	panel(top+10+ph+gap, "p99 latency (ms)", func(s Second) float64 { return s.P99 })
	for i, n := range names {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			left+i*180, h-22, colours[i%len(colours)], left+i*180+16, h-12, html.EscapeString(n))
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}
