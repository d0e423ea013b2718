package p2p

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// deadlineRecorder is a stream that records the deadlines set on it.
type deadlineRecorder struct {
	network.Stream
	reads, writes []time.Time
}

func (r *deadlineRecorder) SetReadDeadline(t time.Time) error {
	r.reads = append(r.reads, t)
	return nil
}

func (r *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	r.writes = append(r.writes, t)
	return nil
}

func (r *deadlineRecorder) Read(p []byte) (int, error)  { return len(p), nil }
func (r *deadlineRecorder) Write(p []byte) (int, error) { return len(p), nil }

func TestDeadlineStreamSetsDeadlinesOnlyWhenTheyMove(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &deadlineRecorder{}
		ds := &deadlineStream{s: rec, idle: 8 * time.Second}
		start := time.Now()
		steps := []struct {
			name  string
			wait  time.Duration
			setup func()
			want  time.Time // the deadline set, if set
			set   bool
		}{
			{name: "first read", set: true, want: start.Add(8 * time.Second)},
			{name: "at once again"},
			{name: "less than idle/8 later", wait: time.Second - time.Millisecond},
			{name: "idle/8 later", wait: time.Millisecond, set: true, want: start.Add(9 * time.Second)},
			{name: "a hard deadline earlier", setup: func() { ds.hard = start.Add(2 * time.Second) }, set: true, want: start.Add(2 * time.Second)},
			{name: "the same hard deadline", wait: 500 * time.Millisecond},
			{name: "no deadline any more", setup: func() { ds.idle, ds.hard = 0, time.Time{} }, set: true},
			{name: "still none", wait: time.Hour},
		}
		for _, st := range steps {
			time.Sleep(st.wait)
			if st.setup != nil {
				st.setup()
			}
			before := len(rec.reads)
			if _, err := ds.Read(make([]byte, 10)); err != nil {
				t.Fatal(err)
			}
			switch {
			case !st.set && len(rec.reads) != before:
				t.Errorf("%s: set read deadline %v, want none set", st.name, rec.reads[before:])
			case st.set && (len(rec.reads) != before+1 || !rec.reads[before].Equal(st.want)):
				t.Errorf("%s: set read deadlines %v, want %v", st.name, rec.reads[before:], st.want)
			}
		}

		// A long write sets a deadline per piece only as time passes.
		ds.idle = 8 * time.Second
		if _, err := ds.Write(make([]byte, 10*deadlineWritePiece)); err != nil {
			t.Fatal(err)
		}
		if len(rec.writes) != 1 {
			t.Errorf("a write of 10 pieces at once set %d deadlines, want 1", len(rec.writes))
		}
		time.Sleep(2 * time.Second)
		if _, err := ds.Write(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		if len(rec.writes) != 2 || !rec.writes[1].Equal(time.Now().Add(8*time.Second)) {
			t.Errorf("write deadlines %v, want a second one 8 s from now", rec.writes)
		}
	})
}
