// Command mkpack writes a generated service pack for examples and manual
// tests: a ZIP of software-like members (as vendors ship), or a plain file.
package main

import (
	"archive/zip"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/patchctl/patchctl/testnet/packgen"
)

func main() {
	out := flag.String("out", "", "file to write (a .zip is written as a ZIP archive)")
	sizeFlag := flag.String("size", "32MiB", "uncompressed size, e.g. 512KiB, 32MiB, 1GiB")
	seed := flag.Uint64("seed", 1, "generator seed: equal seeds give equal packs")
	incompressible := flag.Bool("incompressible", false, "random bytes instead of software-like content")
	flag.Parse()
	size, err := parseSize(*sizeFlag)
	if err != nil || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: mkpack -out FILE [-size N] [-seed N] [-incompressible]")
		os.Exit(2)
	}
	kind := packgen.Software
	if *incompressible {
		kind = packgen.Incompressible
	}
	if err := write(*out, size, *seed, kind); err != nil {
		fmt.Fprintln(os.Stderr, "mkpack:", err)
		os.Exit(1)
	}
}

func write(path string, size int64, seed uint64, kind packgen.Kind) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if !strings.HasSuffix(strings.ToLower(path), ".zip") {
		if _, err := io.Copy(f, packgen.New(seed, size, kind)); err != nil {
			return err
		}
		return f.Close()
	}
	// A ZIP of a few members of deflated software-like content, as a
	// vendor's service pack is.
	zw := zip.NewWriter(f)
	const members = 8
	for i := range members {
		w, err := zw.Create(fmt.Sprintf("pack/component-%02d.bin", i))
		if err != nil {
			return err
		}
		part := size / members
		if i == members-1 {
			part = size - part*(members-1)
		}
		if _, err := io.Copy(w, packgen.New(seed*members+uint64(i), part, kind)); err != nil {
			return err
		}
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			return v * u.mult, err
		}
	}
	return strconv.ParseInt(s, 10, 64)
}
