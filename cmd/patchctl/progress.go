package main

import (
	"io"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// newProgress returns a progress bar on stderr when it is a terminal and
// output is for people, and nil otherwise. Callers use the bar through
// progressSet and progressDone, which accept nil.
func newProgress(g globals, total int64, description string, bytes bool) *progressbar.ProgressBar {
	f, ok := g.stderr.(*os.File)
	if g.json || !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(g.stderr),
		progressbar.OptionSetDescription(description),
		progressbar.OptionThrottle(100e6),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionOnCompletion(func() { io.WriteString(g.stderr, "\n") }),
	}
	if bytes {
		opts = append(opts, progressbar.OptionShowBytes(true))
	}
	return progressbar.NewOptions64(total, opts...)
}

func progressSet(bar *progressbar.ProgressBar, n int64) {
	if bar != nil {
		bar.Set64(n)
	}
}

func progressDone(bar *progressbar.ProgressBar) {
	if bar != nil {
		bar.Finish()
	}
}
