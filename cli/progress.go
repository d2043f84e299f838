package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progressLine shows the progress of a long operation: on a terminal a bar
// redrawn in place with bytes and rate, elsewhere a plain line every
// plainEvery. A nil *progressLine shows nothing.
type progressLine struct {
	w        io.Writer
	label    string
	terminal bool
	start    time.Time
	last     time.Time
	drawn    int // width of the bar on screen (terminal)
}

const (
	redrawEvery = 200 * time.Millisecond
	plainEvery  = 10 * time.Second
)

func newProgressLine(w io.Writer, label string) *progressLine {
	now := time.Now()
	return &progressLine{w: w, label: label, terminal: isTerminal(w), start: now, last: now}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// update reports done of total bytes.
func (p *progressLine) update(done, total int64) {
	if p == nil {
		return
	}
	now := time.Now()
	switch {
	case p.terminal && now.Sub(p.last) < redrawEvery && done < total:
		return
	case !p.terminal && now.Sub(p.last) < plainEvery:
		return // a result line follows the end
	}
	p.last = now
	rate := ""
	if secs := now.Sub(p.start).Seconds(); secs > 0 {
		rate = "  " + formatSize(int64(float64(done)/secs)) + "/s"
	}
	line := p.label + " " + progressBar(done, total) + rate
	if !p.terminal {
		fmt.Fprintln(p.w, line)
		return
	}
	pad := max(p.drawn-len(line), 0)
	fmt.Fprint(p.w, "\r"+line+strings.Repeat(" ", pad))
	p.drawn = len(line)
}

// clear removes the bar from a terminal so that a result line can follow.
func (p *progressLine) clear() {
	if p == nil || !p.terminal || p.drawn == 0 {
		return
	}
	fmt.Fprint(p.w, "\r"+strings.Repeat(" ", p.drawn)+"\r")
	p.drawn = 0
}
