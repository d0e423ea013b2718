package lifecycle

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/patchctl/patchctl/manifest"
)

func TestParseWindow(t *testing.T) {
	for _, in := range []string{"", "22:00-04:00", "00:00-23:59", "23:59-00:00", "09:30-17:45", "00:01-00:00"} {
		w, err := ParseWindow(in)
		if err != nil {
			t.Errorf("ParseWindow(%q): %v", in, err)
			continue
		}
		if got := w.String(); got != in {
			t.Errorf("ParseWindow(%q).String() = %q", in, got)
		}
		if w.IsZero() != (in == "") {
			t.Errorf("ParseWindow(%q).IsZero() = %v", in, w.IsZero())
		}
	}
}

func TestParseWindowRejects(t *testing.T) {
	tests := []struct {
		in, msg string
	}{
		{"22:00-22:00", "opens and closes at the same time"},
		{"24:00-04:00", "use 00:00"},
		{"22:00-24:00", "use 00:00"},
		{"25:00-04:00", "not a time of day"},
		{"22:60-04:00", "not a time of day"},
		{"2:00-04:00", "want HH:MM-HH:MM"},
		{"22:00-4:00", "want HH:MM-HH:MM"},
		{"22:00", "want HH:MM-HH:MM"},
		{"22:00 04:00", "want HH:MM-HH:MM"},
		{" 22:00-04:0", "want HH:MM-HH:MM"},
		{"2 :00-04:00", "not HH:MM"},
		{"22:00-04:00 ", "want HH:MM-HH:MM"},
		{"22.00-04.00", "not HH:MM"},
		{"2a:00-04:00", "not HH:MM"},
		{"+2:00-04:00", "not HH:MM"},
		{"22:00–04:00", "want HH:MM-HH:MM"}, // an en dash
		{"always", "want HH:MM-HH:MM"},
	}
	for _, tt := range tests {
		_, err := ParseWindow(tt.in)
		if !errors.Is(err, manifest.ErrInvalid) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("ParseWindow(%q) error = %v; want one wrapping manifest.ErrInvalid that says %q", tt.in, err, tt.msg)
		}
	}
}

func mustWindow(t *testing.T, s string) Window {
	t.Helper()
	w, err := ParseWindow(s)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// clock returns 2025-06-02 at hh:mm:ss in loc.
func clock(loc *time.Location, hh, mm, ss int) time.Time {
	return time.Date(2025, 6, 2, hh, mm, ss, 0, loc)
}

func TestWindowContains(t *testing.T) {
	tests := []struct {
		window     string
		hh, mm, ss int
		want       bool
	}{
		{"", 12, 0, 0, true},
		{"09:00-17:00", 9, 0, 0, true},    // start inclusive
		{"09:00-17:00", 8, 59, 59, false}, // just before
		{"09:00-17:00", 16, 59, 59, true}, // last second
		{"09:00-17:00", 17, 0, 0, false},  // end exclusive
		{"09:00-17:00", 3, 0, 0, false},
		{"22:00-04:00", 22, 0, 0, true},
		{"22:00-04:00", 23, 59, 59, true},
		{"22:00-04:00", 0, 0, 0, true}, // across midnight
		{"22:00-04:00", 3, 59, 59, true},
		{"22:00-04:00", 4, 0, 0, false},
		{"22:00-04:00", 12, 0, 0, false},
		{"22:00-04:00", 21, 59, 59, false},
		{"23:59-00:00", 23, 59, 30, true},
		{"23:59-00:00", 0, 0, 0, false},
		{"00:00-23:59", 23, 59, 0, false},
		{"00:00-23:59", 0, 0, 0, true},
	}
	for _, tt := range tests {
		at := clock(time.UTC, tt.hh, tt.mm, tt.ss)
		if got := mustWindow(t, tt.window).Contains(at); got != tt.want {
			t.Errorf("%q.Contains(%s) = %v, want %v", tt.window, at.Format(time.TimeOnly), got, tt.want)
		}
	}
}

// A window is read on the clock of the time it is given, not in UTC: callers
// pass local time, and a node in Tokyo opens at 22:00 in Tokyo.
func TestWindowContainsReadsTheClockOfTheTimesLocation(t *testing.T) {
	tokyo := time.FixedZone("JST", 9*3600)
	w := mustWindow(t, "22:00-23:00")
	at := clock(tokyo, 22, 30, 0) // 13:30 UTC
	if !w.Contains(at) || w.Contains(at.UTC()) {
		t.Errorf("Contains(22:30 JST) = %v, Contains(13:30 UTC) = %v; want true, false", w.Contains(at), w.Contains(at.UTC()))
	}
}

func TestWindowNextOpen(t *testing.T) {
	tests := []struct {
		name   string
		window string
		from   time.Time
		want   time.Time
	}{
		{"the zero window is open now", "", clock(time.UTC, 12, 34, 56), clock(time.UTC, 12, 34, 56)},
		{"an open window is open now", "09:00-17:00", clock(time.UTC, 12, 34, 56), clock(time.UTC, 12, 34, 56)},
		{"it opens later today", "09:00-17:00", clock(time.UTC, 7, 15, 30), clock(time.UTC, 9, 0, 0)},
		{"it opens tomorrow after closing today", "09:00-17:00", clock(time.UTC, 17, 0, 0), clock(time.UTC, 9, 0, 0).AddDate(0, 0, 1)},
		{"it opens tonight across midnight", "22:00-04:00", clock(time.UTC, 4, 0, 0), clock(time.UTC, 22, 0, 0)},
		{"it opens at the start of the next minute", "12:35-13:00", clock(time.UTC, 12, 34, 59), clock(time.UTC, 12, 35, 0)},
		{"it waits almost a day", "12:34-12:35", clock(time.UTC, 12, 35, 0), clock(time.UTC, 12, 34, 0).AddDate(0, 0, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustWindow(t, tt.window).NextOpen(tt.from)
			if !got.Equal(tt.want) {
				t.Errorf("%q.NextOpen(%s) = %s, want %s", tt.window, tt.from, got, tt.want)
			}
		})
	}
}

func loadBerlin(t *testing.T) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no zone database: %v", err)
	}
	return loc
}

// In 2025 Berlin springs forward on 30 March at 02:00 CET (to 03:00 CEST) and
// falls back on 26 October at 03:00 CEST (to 02:00 CET); both at 01:00 UTC.
func TestWindowNextOpenAcrossDSTChanges(t *testing.T) {
	berlin := loadBerlin(t)
	utc := func(mo time.Month, d, hh, mm int) time.Time { return time.Date(2025, mo, d, hh, mm, 0, 0, time.UTC) }
	tests := []struct {
		name   string
		window string
		from   time.Time // in UTC; the test reads it in Berlin
		want   time.Time // in UTC
	}{
		{"a window opens at 04:00 on the clock the morning the clocks spring forward",
			"04:00-05:00", utc(3, 29, 4, 0), utc(3, 30, 2, 0)},
		{"a window that starts in the spring-forward gap opens at the jump",
			"02:30-05:00", utc(3, 29, 23, 0), utc(3, 30, 1, 0)},
		{"a window that lies wholly in the spring-forward gap opens the day after",
			"02:15-02:45", utc(3, 29, 23, 0), utc(3, 31, 0, 15)},
		{"a window across midnight opens at 22:00 summer time",
			"22:00-04:00", utc(3, 30, 10, 0), utc(3, 30, 20, 0)},
		{"a window opens at 04:00 on the clock the morning the clocks fall back",
			"04:00-05:00", utc(10, 25, 3, 0), utc(10, 26, 3, 0)},
		{"a window that starts in the fall-back overlap opens the first time",
			"02:30-02:45", utc(10, 25, 22, 0), utc(10, 26, 0, 30)},
		{"a window in the fall-back overlap opens again the second time",
			"02:30-02:45", utc(10, 26, 0, 50), utc(10, 26, 1, 30)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := tt.from.In(berlin)
			got := mustWindow(t, tt.window).NextOpen(from)
			if !got.Equal(tt.want) {
				t.Errorf("%q.NextOpen(%s) = %s, want %s", tt.window, from, got, tt.want.In(berlin))
			}
			if got.Location() != berlin {
				t.Errorf("NextOpen returned a time in %s, want Europe/Berlin", got.Location())
			}
		})
	}
}

// NextOpen must agree with the slow, obvious answer: step minute by minute
// until Contains is true. Checked from many starting points around both of
// Berlin's DST changes, for windows placed before, in, across and after them.
func TestWindowNextOpenIsTheFirstOpenMinuteAroundDSTChanges(t *testing.T) {
	berlin := loadBerlin(t)
	windows := []string{"22:00-04:00", "01:30-02:30", "02:00-03:00", "02:30-03:30", "02:59-03:00", "03:00-02:00", "12:00-12:01"}
	days := []time.Time{
		time.Date(2025, 3, 29, 0, 0, 7, 0, time.UTC),
		time.Date(2025, 10, 25, 0, 0, 7, 0, time.UTC),
	}
	for _, ws := range windows {
		w := mustWindow(t, ws)
		for _, day := range days {
			for from := day; from.Before(day.Add(48 * time.Hour)); from = from.Add(23 * time.Minute) {
				from := from.In(berlin)
				want := from
				if !w.Contains(want) {
					// Berlin's offsets are whole hours, so UTC minutes are
					// wall-clock minutes.
					want = want.Truncate(time.Minute).Add(time.Minute)
					for !w.Contains(want) {
						want = want.Add(time.Minute)
					}
				}
				if got := w.NextOpen(from); !got.Equal(want) {
					t.Fatalf("%q.NextOpen(%s) = %s, want %s", ws, from, got, want)
				}
			}
		}
	}
}
