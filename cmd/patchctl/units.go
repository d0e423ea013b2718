package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize parses a byte count such as 64MiB, 500KB or 1048576.
func parseSize(s string) (int64, error) {
	units := []unit{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1},
	}
	return parseUnits(s, units)
}

// parseRate parses a link rate in bits per second, such as 20Mbit or
// 1Gbit, and returns bytes per second.
func parseRate(s string) (int64, error) {
	units := []unit{
		{"Kbit", 1e3 / 8}, {"Mbit", 1e6 / 8}, {"Gbit", 1e9 / 8}, {"bit", 1.0 / 8},
	}
	n, err := parseUnits(s, units)
	if err == nil && n == 0 {
		err = fmt.Errorf("%q: a rate must be positive", s)
	}
	return n, err
}

// unit is a suffix of a quantity and what it multiplies the number by.
type unit struct {
	suffix string
	mult   float64
}

// parseUnits parses a number followed by one of units' suffixes (matched
// without regard to case, in order) or by none.
func parseUnits(s string, units []unit) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(strings.ToLower(t), strings.ToLower(u.suffix)) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*mult > 1<<50 {
		return 0, fmt.Errorf("%q is not a size or rate this understands", s)
	}
	return int64(v * mult), nil
}
