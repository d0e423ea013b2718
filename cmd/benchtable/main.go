// Command benchtable reads `go test -bench` output on stdin and prints one
// row per benchmark and metric with the median over runs, so `make bench`
// gives a table that holds up on a noisy shared machine.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

type series struct {
	pkg, name string
	metrics   map[string][]float64
	order     []string
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	var all []*series
	byKey := map[string]*series{}
	pkg := ""
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = p
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") {
			continue
		}
		key := pkg + " " + fields[0]
		s := byKey[key]
		if s == nil {
			s = &series{pkg: pkg, name: fields[0], metrics: map[string][]float64{}}
			byKey[key] = s
			all = append(all, s)
		}
		// fields[1] is the iteration count; then value-unit pairs.
		for i := 2; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			unit := fields[i+1]
			if _, ok := s.metrics[unit]; !ok {
				s.order = append(s.order, unit)
			}
			s.metrics[unit] = append(s.metrics[unit], v)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "package\tbenchmark\tmetric\tmedian\truns\t")
	for _, s := range all {
		short := s.pkg[strings.LastIndex(s.pkg, "/")+1:]
		for _, unit := range s.order {
			vals := s.metrics[unit]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t\n", short, strings.TrimPrefix(s.name, "Benchmark"), unit, format(median(vals)), len(vals))
		}
	}
	return tw.Flush()
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func format(v float64) string {
	switch {
	case v >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}
