package lifecycle

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/patchctl/patchctl/manifest"
)

const testPeer = "12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf"

func TestParseSelectorCanonicalForm(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		{"", ""},
		{"site=berlin", "site=berlin"},
		{"target=server,site=berlin", "site=berlin,target=server"},
		{"zone=eu,app=db,site=b", "app=db,site=b,zone=eu"},
		{"node=" + testPeer, "node=" + testPeer},
		{"rack=r1.a_b-c:d/e+f", "rack=r1.a_b-c:d/e+f"},
		{"0k=V", "0k=V"},
		{"a.b_c-d=1", "a.b_c-d=1"},
		{strings.Repeat("k", maxKeyLen) + "=v", strings.Repeat("k", maxKeyLen) + "=v"},
		{"k=" + strings.Repeat("v", maxValueLen), "k=" + strings.Repeat("v", maxValueLen)},
		{manyTerms(maxSelectorTerms), manyTerms(maxSelectorTerms)},
	}
	for _, tt := range tests {
		s, err := ParseSelector(tt.in)
		if err != nil {
			t.Errorf("ParseSelector(%q): %v", tt.in, err)
			continue
		}
		if got := s.String(); got != tt.want {
			t.Errorf("ParseSelector(%q).String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// manyTerms returns a selector of n distinct label terms, already sorted.
func manyTerms(n int) string {
	terms := make([]string, n)
	for i := range terms {
		terms[i] = fmt.Sprintf("k%02d=v", i)
	}
	return strings.Join(terms, ",")
}

func TestParseSelectorRejects(t *testing.T) {
	tests := []struct {
		name, in string
		msg      string // a part of the error message the user needs
	}{
		{"an empty term", "site=a,,target=client", "term 2 is empty"},
		{"a trailing comma", "site=a,", "term 2 is empty"},
		{"a leading comma", ",site=a", "term 1 is empty"},
		{"a lone comma", ",", "is empty"},
		{"a term without '='", "site", "no '='"},
		{"an empty key", "=a", "key is empty"},
		{"an empty value", "site=", "value is empty"},
		{"the same key twice", "site=a,site=b", `key "site" appears twice`},
		{"the same label twice", "k=a,k=a", `key "k" appears twice`},
		{"an upper case key", "Site=a", `keys are lower case: "site"`},
		{"a key starting with a dot", ".k=a", "must start with a letter or digit"},
		{"a key starting with a dash", "-k=a", "must start with a letter or digit"},
		{"a key with a slash", "a/b=c", `character '/'`},
		{"a key too long", strings.Repeat("k", maxKeyLen+1) + "=v", "more than 63"},
		{"a value too long", "k=" + strings.Repeat("v", maxValueLen+1), "more than 128"},
		{"a value with '='", "k=a=b", `character '='`},
		{"a value with a quote", `k="a"`, `character '"'`},
		{"a non-ASCII value", "site=köln", "not allowed"},
		{"a target of neither client nor server", "target=Server", "client or server"},
		{"too many terms", manyTerms(maxSelectorTerms + 1), "33 terms, more than 32"},
		{"a selector too long", "k=" + strings.Repeat("v,k=", 600), "more than 2048"},
		{"a space after a comma", "site=a, target=client", "whitespace at byte 7"},
		{"a leading space", " site=a", "whitespace"},
		{"a tab", "site=a\t", "whitespace"},
		{"a newline", "site=a\n", "whitespace"},
		{"a no-break space", "site=a\u00a0", "whitespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseSelector(tt.in)
			if !errors.Is(err, manifest.ErrInvalid) {
				t.Fatalf("ParseSelector(%q) = %v, want an error wrapping manifest.ErrInvalid", tt.in, err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("ParseSelector(%q) error %q does not say %q", tt.in, err, tt.msg)
			}
		})
	}
}

func TestSelectorMatches(t *testing.T) {
	node := NodeFacts{
		Site:   "berlin",
		Target: "server",
		Node:   testPeer,
		Labels: map[string]string{"rack": "r1", "tier": "db", "empty": ""},
	}
	tests := []struct {
		name string
		sel  string
		n    NodeFacts
		want bool
	}{
		{"the empty selector selects every node", "", node, true},
		{"the empty selector selects a node with no facts", "", NodeFacts{}, true},
		{"site matches the node's site", "site=berlin", node, true},
		{"site differs", "site=paris", node, false},
		{"site compares case-sensitively", "site=Berlin", node, false},
		{"target matches", "target=server", node, true},
		{"target differs", "target=client", node, false},
		{"target does not match a node with no target", "target=server", NodeFacts{Site: "berlin"}, false},
		{"node matches the peer ID as text", "node=" + testPeer, node, true},
		{"node differs", "node=12D3KooWother", node, false},
		{"a label matches", "rack=r1", node, true},
		{"a label differs", "rack=r2", node, false},
		{"a missing label does not match", "zone=eu", node, false},
		{"a label with an empty value matches nothing", "empty=x", node, false},
		{"all terms match", "site=berlin,target=server,rack=r1,tier=db", node, true},
		{"one term of many fails", "site=berlin,target=server,rack=r2", node, false},
		{"a label named site is the built-in", "site=berlin", NodeFacts{Site: "paris", Labels: map[string]string{"site": "berlin"}}, false},
		{"nil labels match no label term", "rack=r1", NodeFacts{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseSelector(tt.sel)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Matches(tt.n); got != tt.want {
				t.Errorf("ParseSelector(%q).Matches(%+v) = %v, want %v", tt.sel, tt.n, got, tt.want)
			}
		})
	}
}

func TestZeroSelectorSelectsEveryNode(t *testing.T) {
	var s Selector
	if !s.Matches(NodeFacts{Site: "x"}) || s.String() != "" {
		t.Errorf("zero Selector: Matches = false or String = %q; want it to select every node and print as \"\"", s)
	}
}

func TestParseLabelFollowsTheSelectorRules(t *testing.T) {
	tests := []struct {
		in         string
		key, value string
		msg        string // non-empty: an error saying this
	}{
		{"rack=r1", "rack", "r1", ""},
		{"os.arch=linux/amd64", "os.arch", "linux/amd64", ""},
		{"ticket=CHG-4711", "ticket", "CHG-4711", ""},
		{"site=berlin", "", "", "set by --site"},
		{"target=server", "", "", "set by --target"},
		{"node=" + testPeer, "", "", "peer ID"},
		{"Rack=r1", "", "", `keys are lower case: "rack"`},
		{"rack", "", "", "no '='"},
		{"rack=", "", "", "value is empty"},
		{"=r1", "", "", "key is empty"},
		{"rack=r 1", "", "", "whitespace"},
		{"rack=r1,tier=db", "", "", `character ','`},
		{"", "", "", "no '='"},
	}
	for _, tt := range tests {
		k, v, err := ParseLabel(tt.in)
		if tt.msg == "" {
			if err != nil || k != tt.key || v != tt.value {
				t.Errorf("ParseLabel(%q) = %q, %q, %v; want %q, %q", tt.in, k, v, err, tt.key, tt.value)
			}
			continue
		}
		if !errors.Is(err, manifest.ErrInvalid) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("ParseLabel(%q) error = %v; want one wrapping manifest.ErrInvalid that says %q", tt.in, err, tt.msg)
		}
	}
}

func TestEveryParsedLabelMatchesItsSelector(t *testing.T) {
	for _, in := range []string{"rack=r1", "os.arch=linux/amd64", "9=x+y:z"} {
		k, v, err := ParseLabel(in)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ParseSelector(in)
		if err != nil {
			t.Fatalf("label %q is not a valid selector: %v", in, err)
		}
		if !s.Matches(NodeFacts{Labels: map[string]string{k: v}}) {
			t.Errorf("selector %q does not match the label it was parsed from", in)
		}
	}
}

// FuzzParseSelector checks that whatever ParseSelector accepts prints in a
// form that parses back to itself, so stored selectors survive a reload. Its
// seeds are in testdata/fuzz/FuzzParseSelector.
func FuzzParseSelector(f *testing.F) {
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSelector(in)
		if err != nil {
			if !errors.Is(err, manifest.ErrInvalid) {
				t.Fatalf("ParseSelector(%q) error %v does not wrap manifest.ErrInvalid", in, err)
			}
			return
		}
		canon := s.String()
		again, err := ParseSelector(canon)
		if err != nil {
			t.Fatalf("ParseSelector(%q) accepted, but its String %q does not parse: %v", in, canon, err)
		}
		if got := again.String(); got != canon {
			t.Fatalf("String of %q is %q, but parses back as %q", in, canon, got)
		}
	})
}
