package testnet

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// sink accepts connections and reads each to its end, reporting the bytes.
func sink(t testing.TB) (string, <-chan int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan int64, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				got <- n
			}()
		}
	}()
	return ln.Addr().String(), got
}

// echoServer accepts one connection and sends back what it reads.
func echoServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	return ln.Addr().String()
}

func forwarder(t testing.TB, target string, up, down Path) *Forwarder {
	t.Helper()
	f, err := NewForwarder(target, up, down)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// send writes n bytes to addr and closes its side.
func send(t testing.TB, addr string, n int64) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	if _, err := io.CopyN(c, rand.Reader, n); err != nil {
		t.Error(err)
	}
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
}

func TestForwarderRelaysBothWaysAndCounts(t *testing.T) {
	echo := echoServer(t)
	up, down := NewPipe("up", 0, 0), NewPipe("down", 0, 0)
	f := forwarder(t, echo, Path{up}, Path{down})
	c, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 100<<10)
	rand.Read(msg)
	go func() {
		c.Write(msg)
		c.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, msg) {
		t.Fatalf("echo through the forwarder: %d bytes, %v", len(back), err)
	}
	if up.Bytes() != int64(len(msg)) || down.Bytes() != int64(len(msg)) {
		t.Errorf("counted %d up and %d down, want %d each", up.Bytes(), down.Bytes(), len(msg))
	}
}

// The lower bounds on time below hold however loaded the machine is: a pipe
// may be slower than its rate, never faster. How close to the rate it gets
// is measured by BenchmarkPipeAccuracy.

func TestPipeNeverExceedsItsRate(t *testing.T) {
	const rate, n = 2 << 20, 2 << 20
	target, got := sink(t)
	f := forwarder(t, target, Path{NewPipe("wan", rate, 0)}, nil)
	start := time.Now()
	send(t, f.Addr().String(), n)
	if m := <-got; m != n {
		t.Fatalf("received %d bytes, want %d", m, n)
	}
	if el, min := time.Since(start), time.Duration(float64(n-pieceSize)/rate*float64(time.Second)); el < min*95/100 {
		t.Errorf("%d bytes through a %d B/s pipe took %s, less than %s", n, rate, el, min)
	}
}

func TestFlowsThroughOneSitePipeShareIt(t *testing.T) {
	const rate, n = 2 << 20, 1 << 20
	siteIn := NewPipe("site wan in", rate, 0)
	var wg sync.WaitGroup
	start := time.Now()
	for range 2 {
		target, got := sink(t)
		// Two peers of the site, each behind its own forwarder, both
		// downloading through the site's one WAN pipe.
		f := forwarder(t, target, Path{siteIn}, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(t, f.Addr().String(), n)
			<-got
		}()
	}
	wg.Wait()
	if el, min := time.Since(start), time.Duration(float64(2*n-pieceSize)/rate*float64(time.Second)); el < min*95/100 {
		t.Errorf("2 × %d bytes through one %d B/s pipe took %s, less than %s", n, rate, el, min)
	}
	if siteIn.Bytes() != 2*n {
		t.Errorf("the site pipe counted %d bytes, want %d", siteIn.Bytes(), 2*n)
	}
}

func TestLatencyDelaysEveryByte(t *testing.T) {
	echo := echoServer(t)
	const latency = 40 * time.Millisecond
	f := forwarder(t, echo, Path{NewPipe("up", 0, latency)}, Path{NewPipe("down", 0, latency)})
	c, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 2*latency {
		t.Errorf("round trip %s, want at least %s", rtt, 2*latency)
	}
}

// BenchmarkPipeAccuracy reports how close shaped flows get to the rate they
// are given: one flow, two flows sharing a site pipe, both directions of a
// connection at once (separate pipes, so each should get the whole rate), and
// one flow over a path with 50 ms of latency (a delay
// line must keep it at the rate, where stop-and-wait would not).
func BenchmarkPipeAccuracy(b *testing.B) {
	const rate, n = 8 << 20, 16 << 20
	measure := func(fn func()) float64 {
		start := time.Now()
		fn()
		return time.Since(start).Seconds()
	}
	for b.Loop() {
		target, got := sink(b)
		f := forwarder(b, target, Path{NewPipe("wan", rate, 0)}, nil)
		one := measure(func() { send(b, f.Addr().String(), n); <-got })
		b.ReportMetric(float64(n)/one/rate, "one_flow_of_rate")

		shared := NewPipe("site", rate, 0)
		t1, g1 := sink(b)
		t2, g2 := sink(b)
		f1, f2 := forwarder(b, t1, Path{shared}, nil), forwarder(b, t2, Path{shared}, nil)
		two := measure(func() {
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); send(b, f1.Addr().String(), n/2); <-g1 }()
			go func() { defer wg.Done(); send(b, f2.Addr().String(), n/2); <-g2 }()
			wg.Wait()
		})
		b.ReportMetric(float64(n)/two/rate, "two_flows_of_rate")

		both := duplexRate(b, rate, n/2)
		b.ReportMetric(both, "each_direction_of_rate")

		lt, lg := sink(b)
		fl := forwarder(b, lt, Path{NewPipe("far", rate, 50*time.Millisecond)}, nil)
		far := measure(func() { send(b, fl.Addr().String(), n); <-lg })
		b.ReportMetric(float64(n)/far/rate, "latency_50ms_of_rate")
	}
}

// duplexRate sends n bytes each way at once over a connection whose two
// directions cross separate pipes of the given rate, and returns the rate of
// each direction over the given one.
func duplexRate(b *testing.B, rate, n int64) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { io.CopyN(c, rand.Reader, n); c.(*net.TCPConn).CloseWrite() }()
		io.Copy(io.Discard, c)
	}()
	f := forwarder(b, ln.Addr().String(), Path{NewPipe("up", rate, 0)}, Path{NewPipe("down", rate, 0)})
	c, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	go func() { io.CopyN(c, rand.Reader, n); c.(*net.TCPConn).CloseWrite() }()
	if got, _ := io.Copy(io.Discard, c); got != n {
		b.Fatalf("received %d of %d bytes", got, n)
	}
	return float64(n) / time.Since(start).Seconds() / float64(rate)
}
