package manifest

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// PackKind tells what a release name identifies.
type PackKind int

const (
	// Generic is any package that does not follow the HF/SP scheme.
	Generic PackKind = iota
	// ServicePack is SP-(C|S)JJNNLLYYY.
	ServicePack
	// Hotfix is HF-(C|S)JJNNLLYYY-ZZZ, bound to one service pack.
	Hotfix
)

func (k PackKind) String() string {
	switch k {
	case ServicePack:
		return "service pack"
	case Hotfix:
		return "hotfix"
	default:
		return "package"
	}
}

// PackID is a parsed release name. For HF/SP names every numeric field is
// set; for generic packages only Name and Kind are.
type PackID struct {
	Name        string
	Kind        PackKind
	Target      byte // 'C' client or 'S' server
	Major       int  // JJ
	Minor       int  // NN
	Letter      int  // LL, the letter release
	ServicePack int  // YYY
	Hotfix      int  // ZZZ, hotfixes only
}

// Release is the product release a pack belongs to, as "04.10.00".
func (p PackID) Release() string {
	return fmt.Sprintf("%02d.%02d.%02d", p.Major, p.Minor, p.Letter)
}

// ServicePackName is the name of the service pack a hotfix applies to, or the
// service pack's own name; empty for generic packages.
func (p PackID) ServicePackName() string {
	if p.Kind == Generic {
		return ""
	}
	return fmt.Sprintf("SP-%c%02d%02d%02d%03d", p.Target, p.Major, p.Minor, p.Letter, p.ServicePack)
}

// MaxNameLen bounds release names; they become file names in the data dir.
const MaxNameLen = 128

// ParsePackName parses a release name. HF- and SP- names must follow the vendor
// scheme exactly; any other name made of letters, digits and "._+-" that does
// not start with a dot is a generic package.
func ParsePackName(name string) (PackID, error) {
	if name == "" {
		return PackID{}, fmt.Errorf("release name is empty: %w", ErrInvalid)
	}
	if len(name) > MaxNameLen {
		return PackID{}, fmt.Errorf("release name is %d bytes, more than %d: %w", len(name), MaxNameLen, ErrInvalid)
	}
	if err := checkToken(name); err != nil {
		return PackID{}, fmt.Errorf("release name %w", err)
	}
	prefix := strings.ToUpper(name[:min(3, len(name))])
	switch prefix {
	case "HF-":
		return parseVendorName(name, Hotfix)
	case "SP-":
		return parseVendorName(name, ServicePack)
	}
	return PackID{Name: name, Kind: Generic}, nil
}

func parseVendorName(name string, kind PackKind) (PackID, error) {
	want := "SP-(C|S)JJNNLLYYY, e.g. SP-S041000005"
	if kind == Hotfix {
		want = "HF-(C|S)JJNNLLYYY-ZZZ, e.g. HF-S041000005-012"
	}
	bad := func(why string) (PackID, error) {
		return PackID{}, fmt.Errorf("release name %q: %s; want %s: %w", name, why, want, ErrInvalid)
	}
	if name[:3] != strings.ToUpper(name[:3]) {
		return bad("the prefix must be upper case")
	}
	body := name[3:]
	wantLen := 10
	if kind == Hotfix {
		wantLen = 14
	}
	if len(body) != wantLen {
		return bad(fmt.Sprintf("%d characters after the prefix, want %d", len(body), wantLen))
	}
	if body[0] != 'C' && body[0] != 'S' {
		return bad(fmt.Sprintf("target %q is neither C (client) nor S (server)", firstRune(body)))
	}
	digits := body[1:10]
	if kind == Hotfix {
		if body[10] != '-' {
			return bad("the hotfix number must follow a '-'")
		}
		digits += body[11:]
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return bad(fmt.Sprintf("%q is not a digit", firstRune(digits[i:])))
		}
	}
	num := func(s string) int { n, _ := strconv.Atoi(s); return n }
	id := PackID{
		Name:        name,
		Kind:        kind,
		Target:      body[0],
		Major:       num(digits[0:2]),
		Minor:       num(digits[2:4]),
		Letter:      num(digits[4:6]),
		ServicePack: num(digits[6:9]),
	}
	if kind == Hotfix {
		id.Hotfix = num(digits[9:12])
	}
	return id, nil
}

// firstRune returns the first character of s, whole: a byte of a
// multi-byte character quoted alone reads as another character.
func firstRune(s string) rune {
	r, _ := utf8.DecodeRuneInString(s)
	return r
}

// checkToken reports whether s is made of letters, digits and "._+-" and
// starts with a letter or digit, so it is safe as a file name on every system.
func checkToken(s string) error {
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '+' || c == '-'
		if !ok {
			return fmt.Errorf("%q: character %q is not allowed (ASCII letters, digits and . _ + - only): %w", s, c, ErrInvalid)
		}
	}
	if s == "" || s[0] == '.' || s[0] == '-' || s[0] == '_' || s[0] == '+' {
		return fmt.Errorf("%q must start with a letter or digit: %w", s, ErrInvalid)
	}
	return nil
}
