package main

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"
)

// applyConfigFile sets, from the YAML file that --config names, every flag
// of the command that the command line did not set: a key is a flag's name
// (data-dir included), a value a scalar or, for a repeatable flag, a list.
// A key that names no flag is an error that names the nearest one, so that
// a misspelt setting is never dropped in silence.
func applyConfigFile(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return usageError("config %s: %v", path, err)
	}
	known := map[string]bool{"data-dir": true}
	for _, f := range c.Command.Flags {
		for _, name := range f.Names() {
			if name != "config" && name != "json" {
				known[name] = true
			}
		}
	}
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, key := range keys {
		if !known[key] {
			msg := fmt.Sprintf("config %s: unknown setting %q", path, key)
			if near := nearest(key, known); near != "" {
				msg += fmt.Sprintf("; did you mean %q?", near)
			}
			return usageError("%s", msg)
		}
		// The global data dir is set on the context that holds it.
		ctx := c
		if key == "data-dir" {
			ctx = globalContext(c)
		}
		if ctx.IsSet(key) {
			continue
		}
		values, err := configValues(doc[key])
		if err != nil {
			return usageError("config %s: %s: %v", path, key, err)
		}
		for _, v := range values {
			if err := ctx.Set(key, v); err != nil {
				return usageError("config %s: %s: %v", path, key, err)
			}
		}
	}
	return nil
}

// globalContext returns the context of the app's own flags.
func globalContext(c *cli.Context) *cli.Context {
	for _, x := range c.Lineage() {
		if slices.Contains(x.FlagNames(), "data-dir") {
			return x
		}
	}
	return c
}

// configValues renders a YAML value as the flag values it stands for.
func configValues(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, errors.New("no value")
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, err := configValues(e)
			if err != nil || len(s) != 1 {
				return nil, errors.New("a list may hold only single values")
			}
			out = append(out, s[0])
		}
		return out, nil
	case map[string]any:
		return nil, errors.New("a value must be a single value or a list, not a mapping")
	}
	return []string{fmt.Sprint(v)}, nil
}

// nearest returns the name in names closest to s by edit distance, if one
// is close enough to be what was meant. Written here because the only
// library doing it would be a dependency for ten lines.
func nearest(s string, names map[string]bool) string {
	best, bestDist := "", len(s)/2+2
	for name := range names {
		if d := editDistance(s, name); d < bestDist || (d == bestDist && name < best) {
			best, bestDist = name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
