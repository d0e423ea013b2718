package p2p

import "time"

// rateSample is the shortest time a rate sample spans: shorter ones measure
// how bytes bunch up in buffers more than how fast a peer sends.
const rateSample = 50 * time.Millisecond

// rateMeter is an EWMA of the bytes per second a peer delivers on the wire.
type rateMeter struct {
	rate     float64   // bytes/s, 0 until the first sample ends
	sample   int64     // bytes since sampleAt
	sampleAt time.Time // start of the current sample, zero before any bytes
}

// add counts n bytes received at now and reports whether that ended a
// sample and so changed the rate.
func (m *rateMeter) add(n int64, now time.Time) bool {
	m.sample += n
	if m.sampleAt.IsZero() {
		m.sampleAt = now
		return false
	}
	el := now.Sub(m.sampleAt)
	if el < rateSample {
		return false
	}
	r := float64(m.sample) / el.Seconds()
	if m.rate == 0 {
		m.rate = r
	} else {
		m.rate = 0.7*m.rate + 0.3*r
	}
	m.sample, m.sampleAt = 0, now
	return true
}

// countWire counts n frame bytes received from p and, as its rate changes,
// sizes its window to QueueTime of that rate.
func (f *fetch) countWire(p *fetchPeer, n int64) {
	f.res.BytesFetched += n
	f.framesReceived++
	p.stats.WireBytes += n
	if p.meter.add(n, f.clock.Now()) {
		frame := f.avgFrame()
		p.window = rateWindow(p.meter.rate, f.cfg.QueueTime, frame, floorWindow(p.meter.rate, f.cfg.StallTimeout, frame), f.cfg.MaxWindow)
	}
}

// floorWindow is the fewest chunks p's window allows in flight.
func (f *fetch) floorWindow(p *fetchPeer) int {
	return floorWindow(p.meter.rate, f.cfg.StallTimeout, f.avgFrame())
}

// avgFrame is the mean bytes on the wire per chunk: of the frames received
// so far, or before any, of the chunks uncompressed. Windows count chunks
// and rates count wire bytes, so a chunk must be counted in wire bytes too,
// or a pack that compresses well gets windows too shallow
// (docs/decisions/0020).
func (f *fetch) avgFrame() float64 {
	if f.framesReceived > 0 {
		return float64(f.res.BytesFetched) / float64(f.framesReceived)
	}
	return float64(f.bytesTotal) / float64(max(1, len(f.ids)))
}
