package lifecycle

import (
	"fmt"
	"time"

	"github.com/patchctl/patchctl/manifest"
)

const minutesPerDay = 24 * 60

// Window is a daily time span "HH:MM-HH:MM" in local time; the zero Window is always open.
//
// It is kept as minutes of the wall-clock day rather than as durations from
// midnight, because operators mean "at 22:00 on the clock", which on a DST
// change day is not 22 hours after midnight.
type Window struct {
	start, end int // minutes of the day; end < start crosses midnight
	set        bool
}

// ParseWindow parses "HH:MM-HH:MM" in 24-hour local time. The empty string is
// the always-open zero Window; a start after the end crosses midnight.
func ParseWindow(s string) (Window, error) {
	if s == "" {
		return Window{}, nil
	}
	bad := func(why string) (Window, error) {
		return Window{}, fmt.Errorf("window %q: %s: %w", s, why, manifest.ErrInvalid)
	}
	const want = "want HH:MM-HH:MM in 24-hour local time, e.g. 22:00-04:00"
	if len(s) != len("HH:MM-HH:MM") || s[5] != '-' {
		return bad(want)
	}
	start, err := parseClock(s[:5])
	if err != nil {
		return bad(err.Error())
	}
	end, err := parseClock(s[6:])
	if err != nil {
		return bad(err.Error())
	}
	if start == end {
		// Both readings, "never" and "all day", are better said another way.
		return bad("it opens and closes at the same time; leave it empty to be always open")
	}
	return Window{start: start, end: end, set: true}, nil
}

// parseClock parses a strict "HH:MM" into minutes of the day.
func parseClock(s string) (int, error) {
	if len(s) != 5 || s[2] != ':' || !isDigit(s[0]) || !isDigit(s[1]) || !isDigit(s[3]) || !isDigit(s[4]) {
		return 0, fmt.Errorf("%q is not HH:MM with two digits each, e.g. 04:00", s)
	}
	h := int(s[0]-'0')*10 + int(s[1]-'0')
	m := int(s[3]-'0')*10 + int(s[4]-'0')
	if h == 24 && m == 0 {
		// The end of the day is the start of the next; one spelling is enough.
		return 0, fmt.Errorf("24:00 is not a time of day; use 00:00")
	}
	if h > 23 || m > 59 {
		return 0, fmt.Errorf("%q is not a time of day (00:00 to 23:59)", s)
	}
	return h*60 + m, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// String returns "" for the zero Window, else "HH:MM-HH:MM", which
// ParseWindow reads back.
func (w Window) String() string {
	if !w.set {
		return ""
	}
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.start/60, w.start%60, w.end/60, w.end%60)
}

// IsZero reports whether w is the always-open zero Window.
func (w Window) IsZero() bool { return !w.set }

// Contains reports whether the wall clock of t, in t's own location, is in
// the window: start inclusive, end exclusive.
func (w Window) Contains(t time.Time) bool {
	if !w.set {
		return true
	}
	m := t.Hour()*60 + t.Minute()
	if w.start < w.end {
		return w.start <= m && m < w.end
	}
	return m >= w.start || m < w.end
}

// NextOpen returns t if the window is open at t, else the first later instant
// at which it is, in t's location.
//
// Adding a day's worth of minutes would be wrong on DST change days, and
// time.Date alone is not enough either: a start that falls in a spring-forward
// gap does not exist (the window opens at the jump), and one in a fall-back
// overlap happens twice (time.Date may pick the later). So the search walks
// the zone periods from t: within one period the wall clock is a fixed offset
// from UTC, so the next start is plain arithmetic, and at a period's end the
// clock jumps, possibly into the window.
func (w Window) NextOpen(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	u := t
	// This ends: each round moves u to a later zone change, and zones do not
	// change daily, so a period soon lasts long enough to reach the start.
	for {
		// Back to the start of u's wall-clock minute; whole minutes from there
		// land on wall-clock minutes while the offset holds.
		sec := time.Duration(u.Second())*time.Second + time.Duration(u.Nanosecond())
		m := u.Hour()*60 + u.Minute()
		// m != w.start, else the window would be open at u.
		wait := (w.start - m + minutesPerDay) % minutesPerDay
		next := u.Add(time.Duration(wait)*time.Minute - sec)
		_, end := u.ZoneBounds()
		if end.IsZero() || next.Before(end) {
			return next
		}
		if w.Contains(end) {
			return end
		}
		u = end
	}
}
