package manifest

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePackName(t *testing.T) {
	tests := []struct {
		name string
		kind PackKind // for valid names
		ok   bool
	}{
		{"HF-S041000005-012", Hotfix, true},
		{"HF-C990199999-999", Hotfix, true},
		{"HF-S000000000-000", Hotfix, true},
		{"SP-S041000005", ServicePack, true},
		{"SP-C010203004", ServicePack, true},
		{"agent-tools", Generic, true},
		{"agent_tools+linux-1.2.3", Generic, true},
		{"7zip", Generic, true},
		{"HFX-1", Generic, true},
		{"SPARE", Generic, true},
		{strings.Repeat("a", MaxNameLen), Generic, true},

		{"", 0, false},
		{strings.Repeat("a", MaxNameLen+1), 0, false},
		{"HF-S041000005-01", 0, false},   // hotfix number too short
		{"HF-S041000005-0123", 0, false}, // too long
		{"HF-S04100005-012", 0, false},   // body too short
		{"SP-S04100000", 0, false},       // too short
		{"SP-S0410000050", 0, false},     // too long
		{"SP-S041000005-012", 0, false},  // a hotfix number on a service pack
		{"hf-S041000005-012", 0, false},  // lower-case prefix
		{"Hf-S041000005-012", 0, false},  // mixed-case prefix
		{"sp-S041000005", 0, false},      // lower-case prefix
		{"HF-X041000005-012", 0, false},  // bad target letter
		{"HF-s041000005-012", 0, false},  // lower-case target
		{"SP-A041000005", 0, false},      // bad target letter
		{"HF-S04100000A-012", 0, false},  // non-digit
		{"HF-S041000005-01A", 0, false},  // non-digit hotfix number
		{"SP-S0410O0005", 0, false},      // letter O for zero
		{"HF-S041000005_012", 0, false},  // missing dash
		{"HF-S0410000051012", 0, false},  // missing dash
		{"HF-S041000005-+12", 0, false},  // sign in digits
		{"HF-S041000005- 12", 0, false},  // space
		{"agent tools", 0, false},        // space
		{"agent/tools", 0, false},        // slash
		{`agent\tools`, 0, false},        // backslash
		{"agent:tools", 0, false},        // colon
		{"agent\x00", 0, false},          // NUL
		{"ägent", 0, false},              // non-ASCII
		{".hidden", 0, false},            // leading dot
		{"..", 0, false},                 // leading dot
		{"-rf", 0, false},                // leading dash
		{"_x", 0, false},                 // leading underscore
		{"+x", 0, false},                 // leading plus
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParsePackName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("ParsePackName(%q) = %+v, %v; want ok=%v", tt.name, id, err, tt.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				return
			}
			if id.Kind != tt.kind || id.Name != tt.name {
				t.Errorf("ParsePackName(%q) = kind %v name %q, want %v", tt.name, id.Kind, id.Name, tt.kind)
			}
		})
	}
}

func TestPackIDFields(t *testing.T) {
	tests := []struct {
		name        string
		want        PackID
		release, sp string
	}{
		{
			name:    "HF-S041000005-012",
			want:    PackID{Name: "HF-S041000005-012", Kind: Hotfix, Target: 'S', Major: 4, Minor: 10, Letter: 0, ServicePack: 5, Hotfix: 12},
			release: "04.10.00",
			sp:      "SP-S041000005",
		},
		{
			name:    "SP-C123456789",
			want:    PackID{Name: "SP-C123456789", Kind: ServicePack, Target: 'C', Major: 12, Minor: 34, Letter: 56, ServicePack: 789},
			release: "12.34.56",
			sp:      "SP-C123456789",
		},
		{
			name: "agent-tools",
			want: PackID{Name: "agent-tools", Kind: Generic},
			sp:   "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := ParsePackName(tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if id != tt.want {
				t.Errorf("ParsePackName(%q) = %+v, want %+v", tt.name, id, tt.want)
			}
			if tt.release != "" && id.Release() != tt.release {
				t.Errorf("Release() = %q, want %q", id.Release(), tt.release)
			}
			if id.ServicePackName() != tt.sp {
				t.Errorf("ServicePackName() = %q, want %q", id.ServicePackName(), tt.sp)
			}
		})
	}
}

func TestPackKindString(t *testing.T) {
	for k, want := range map[PackKind]string{Generic: "package", ServicePack: "service pack", Hotfix: "hotfix"} {
		if k.String() != want {
			t.Errorf("%d.String() = %q, want %q", k, k.String(), want)
		}
	}
}
