package lifecycle

import (
	"fmt"
	"sort"
	"strings"
	"unicode"

	"github.com/patchctl/patchctl/manifest"
)

// NodeFacts are what a selector can match on a node.
type NodeFacts struct {
	Site   string            // site name
	Target string            // "client", "server" or "" (not set)
	Node   string            // the node's peer ID, as text
	Labels map[string]string // operator labels (--label k=v)
}

// Limits on selectors. They keep a deployment's selector small enough to
// show in one line of status output and cheap to evaluate on every node.
const (
	maxSelectorLen   = 2048
	maxSelectorTerms = 32
	maxKeyLen        = 63
	maxValueLen      = 128
)

// Built-in selector keys. They match the node's own settings, so a label of
// the same name could never be told apart from them: such a label is refused
// by ParseLabel, and in a selector the key always means the built-in.
const (
	keySite   = "site"
	keyTarget = "target"
	keyNode   = "node"
)

// Selector picks the nodes a deployment applies to: every term must match.
// The zero Selector has no terms and selects every node.
type Selector struct {
	terms []term // sorted by key, keys unique
}

type term struct{ key, value string }

// ParseSelector parses comma-separated key=value terms, all of which must
// match. The empty string selects every node.
func ParseSelector(s string) (Selector, error) {
	bad := func(format string, args ...any) (Selector, error) {
		return Selector{}, fmt.Errorf("selector %q: %s: %w", s, fmt.Sprintf(format, args...), manifest.ErrInvalid)
	}
	if len(s) > maxSelectorLen {
		// Quote only the length: echoing kilobytes back helps no one.
		return Selector{}, fmt.Errorf("selector is %d bytes, more than %d: %w", len(s), maxSelectorLen, manifest.ErrInvalid)
	}
	if i := indexSpace(s); i >= 0 {
		return bad("whitespace at byte %d; write terms as key=value,key=value without spaces", i)
	}
	if s == "" {
		return Selector{}, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxSelectorTerms {
		return bad("%d terms, more than %d", len(parts), maxSelectorTerms)
	}
	terms := make([]term, 0, len(parts))
	seen := make(map[string]bool, len(parts))
	for i, p := range parts {
		if p == "" {
			return bad("term %d is empty; remove the extra comma", i+1)
		}
		k, v, err := splitTerm(p)
		if err != nil {
			return bad("term %d: %v", i+1, err)
		}
		if k == keyTarget && v != "client" && v != "server" {
			return bad("term %d: target must be client or server, not %q", i+1, v)
		}
		if seen[k] {
			// Terms are joined by "and", so a repeated key is either redundant
			// or can never match; both are more likely a typo than intent.
			return bad("key %q appears twice", k)
		}
		seen[k] = true
		terms = append(terms, term{k, v})
	}
	sort.Slice(terms, func(i, j int) bool { return terms[i].key < terms[j].key })
	return Selector{terms: terms}, nil
}

// Matches reports whether every term of s matches n.
func (s Selector) Matches(n NodeFacts) bool {
	for _, t := range s.terms {
		var have string
		switch t.key {
		case keySite:
			have = n.Site
		case keyTarget:
			have = n.Target
		case keyNode:
			have = n.Node
		default:
			// A missing label reads as "", which no term value equals.
			have = n.Labels[t.key]
		}
		if have != t.value {
			return false
		}
	}
	return true
}

// String is the canonical form, terms sorted by key, so that equal selectors
// print and compare equal whatever order they were written in.
func (s Selector) String() string {
	var b strings.Builder
	for i, t := range s.terms {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(t.key)
		b.WriteByte('=')
		b.WriteString(t.value)
	}
	return b.String()
}

// LabelKeys returns the keys of the selector's label terms: those that are
// not built-in (site, target, node).
func (s Selector) LabelKeys() []string {
	var keys []string
	for _, t := range s.terms {
		if t.key != keySite && t.key != keyTarget && t.key != keyNode {
			keys = append(keys, t.key)
		}
	}
	return keys
}

// ParseLabel parses the value of a --label key=value flag. Keys and values
// follow the selector rules, so that every label can be selected.
func ParseLabel(s string) (key, value string, err error) {
	bad := func(format string, args ...any) (string, string, error) {
		return "", "", fmt.Errorf("label %q: %s: %w", s, fmt.Sprintf(format, args...), manifest.ErrInvalid)
	}
	if i := indexSpace(s); i >= 0 {
		return bad("whitespace at byte %d; write key=value without spaces", i)
	}
	k, v, err := splitTerm(s)
	if err != nil {
		return bad("%v", err)
	}
	switch k {
	case keySite, keyTarget:
		return bad("%q is set by --%s, not as a label", k, k)
	case keyNode:
		return bad("%q is the node's peer ID, not a label", k)
	}
	return k, v, nil
}

// splitTerm splits "key=value" and checks both halves. Its errors carry no
// sentinel: callers wrap them with the input they came from.
func splitTerm(p string) (key, value string, err error) {
	k, v, ok := strings.Cut(p, "=")
	if !ok {
		return "", "", fmt.Errorf("%q has no '='; want key=value", p)
	}
	if err := checkKey(k); err != nil {
		return "", "", err
	}
	if err := checkValue(v); err != nil {
		return "", "", err
	}
	return k, v, nil
}

func checkKey(k string) error {
	if k == "" {
		return fmt.Errorf("key is empty; want key=value")
	}
	if len(k) > maxKeyLen {
		return fmt.Errorf("key %q is %d characters, more than %d", k, len(k), maxKeyLen)
	}
	if strings.ToLower(k) != k {
		return fmt.Errorf("key %q has upper case letters; keys are lower case: %q", k, strings.ToLower(k))
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("key %q: character %q is not allowed (a-z, 0-9 and . _ - only)", k, c)
		}
	}
	if c := k[0]; c == '.' || c == '_' || c == '-' {
		return fmt.Errorf("key %q must start with a letter or digit", k)
	}
	return nil
}

func checkValue(v string) error {
	if v == "" {
		return fmt.Errorf("value is empty; want key=value")
	}
	if len(v) > maxValueLen {
		return fmt.Errorf("value %q is %d characters, more than %d", v, len(v), maxValueLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == '-' || c == ':' || c == '/' || c == '+') {
			return fmt.Errorf("value %q: character %q is not allowed (letters, digits and . _ - : / + only)", v, c)
		}
	}
	return nil
}

// indexSpace finds whitespace of any kind, so that the error can say so
// rather than blaming a character the user cannot see.
func indexSpace(s string) int {
	return strings.IndexFunc(s, unicode.IsSpace)
}
