package main

import (
	"strings"
	"testing"
)

func TestMedianTable(t *testing.T) {
	in := `pkg: example.com/x/store
BenchmarkPut-2   	       1	  3000 ns/op	 100.00 MB/s	 5 pct
BenchmarkPut-2   	       1	  1000 ns/op	 300.00 MB/s	 7 pct
BenchmarkPut-2   	       1	  2000 ns/op	 200.00 MB/s	 9 pct
PASS
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Put-2", "ns/op", "2000", "MB/s", "200.0", "7.000"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}
