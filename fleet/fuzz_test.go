package fleet

import (
	"encoding/json"
	"testing"
)

// The fuzz targets of the fleet protocols' decoders; seeds are in
// testdata/fuzz.

func FuzzDecodeTrackerReport(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := DecodeTrackerReport(p)
		if err != nil {
			return
		}
		if len(r.Releases) > MaxTrackedReleases {
			t.Fatalf("report of %d releases accepted", len(r.Releases))
		}
		// What was accepted is what a client would send: it validates.
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted report does not validate: %v", err)
		}
	})
}

func FuzzDecodeTrackerAnswer(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		res, err := DecodeTrackerAnswer(p)
		if err != nil {
			return
		}
		if len(res.Peers) > MaxTrackerPeers || len(res.Retry) > MaxRetryOrders {
			t.Fatalf("answer of %d peers, %d retries accepted", len(res.Peers), len(res.Retry))
		}
		again, err := DecodeTrackerAnswer(mustJSON(t, NewTrackerAnswer(res)))
		if err != nil || len(again.Peers) != len(res.Peers) || len(again.Retry) != len(res.Retry) {
			t.Fatalf("accepted answer does not survive re-encoding: %v", err)
		}
	})
}

func FuzzDecodeStatusReport(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := DecodeStatusReport(p)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted report does not validate: %v", err)
		}
		if _, err := DecodeStatusReport(mustJSON(t, r)); err != nil {
			t.Fatalf("accepted report does not survive re-encoding: %v", err)
		}
	})
}

func FuzzDecodeStatusAnswer(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		a, err := DecodeStatusAnswer(p)
		if err != nil {
			return
		}
		if _, err := DecodeStatusAnswer(mustJSON(t, a)); err != nil {
			t.Fatalf("accepted answer does not survive re-encoding: %v", err)
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
